"""G2SD (both stages) and Hybrid Distillation under 2-process gloo DDP: every trainable parameter takes part
in each step (DDP here does not search for unused ones), rank 0 validates while rank 1 waits, and the
ranks end with identical weights."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ssl_distill.engine import Trainer

from conftest import finetune_overrides, tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _configs(out: Path, mae: str, finetuned: str, supervised: str) -> dict:
    steps = ["train.max_steps=3", "data.batch_size=8"]
    return {
        "generic": tiny_config(
            "g2sd/tiny_mnist_generic.yaml", out / "generic", f"objective.teacher.source={mae}", "objective.decoder.depth=2",
            "objective.teacher_decoder_blocks=1", *steps,
        ),
        "specific": tiny_config(
            "g2sd/tiny_mnist_specific.yaml", out / "specific",
            *finetune_overrides(out, "model.embed_dim=32", "model.depth=2", "model.num_heads=2", "objective.pretrained=null"),
            f"objective.teacher.source={finetuned}", "train.eval_every=2", *steps, decoder=False,
        ),
        "hybrid": tiny_config(
            "hybrid/tiny_mnist.yaml", out / "hybrid", f"objective.contrastive_teacher.source={supervised}",
            f"objective.mim_teacher.source={mae}", *steps, decoder=False,
        ),
    }


def _worker(rank: int, port: int, out: str, mae: str, finetuned: str, supervised: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from ssl_distill.engine.distributed import init_distributed

    env = init_distributed()
    for name, cfg in _configs(Path(out), mae, finetuned, supervised).items():
        trainer = Trainer(cfg, env)
        trainer.fit()
        torch.save(trainer.objective.state_dict(), Path(out) / f"{name}_rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_g2sd_and_hybrid_train_under_ddp(tmp_path, mae_teacher_with_decoder, finetuned_teacher, supervised_teacher):
    teachers = (str(mae_teacher_with_decoder), str(finetuned_teacher), str(supervised_teacher))
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), *teachers), nprocs=2, join=True)
    for name in ("generic", "specific", "hybrid"):
        ranks = [torch.load(tmp_path / f"{name}_rank{r}.pt") for r in (0, 1)]
        for key in ranks[0]:
            assert torch.equal(ranks[0][key], ranks[1][key]), (name, key)
    rows = (tmp_path / "specific" / "g2sd_specific_tiny_mnist" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert [r.split(",")[header.index("val_n")] for r in rows[1:]] == ["", "64", "64"]  # steps 2 and 3 (the end)
