"""Scale-out: 2-process gloo DDP equals one process with the same global batch; a NaN on one rank stops
every rank; checkpointed stop on a signal and exact continuation; submitit's local executor end to end with a preemption; a crash while
writing a checkpoint leaves the previous one loadable."""

from __future__ import annotations

import csv
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ssl_distill import checkpoints as ckpt
from ssl_distill.config import load_config
from ssl_distill.engine import Trainer, train
from ssl_distill.engine.run_record import signal_run
from ssl_distill.errors import RunError
from ssl_distill.launch.submit import submit

from conftest import CONFIGS, REPO, TINY, tiny_config

DINO = [
    "objective.output_dim=128", "objective.hidden_dim=32", "objective.batch_norm=false",
    "data.transform.n_local_views=2", "train.max_steps=3", "optim.lr=1e-3",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from ssl_distill.engine.distributed import init_distributed

    cfg = tiny_config("dino/tiny_mnist.yaml", Path(out) / "ddp", *DINO, "data.batch_size=8", decoder=False)
    trainer = Trainer(cfg, init_distributed())
    trainer.fit()
    torch.save(trainer.objective.state_dict(), Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path):
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # teachers, centres, students identical
    torch.set_num_threads(1)
    single = Trainer(tiny_config("dino/tiny_mnist.yaml", tmp_path / "single", *DINO, "data.batch_size=16", decoder=False))
    single.fit()
    state = single.objective.state_dict()
    assert not torch.equal(state["student.encoder.vit.blocks.0.attn.qkv.weight"], single.objective.teacher.state_dict()["encoder.vit.blocks.0.attn.qkv.weight"])
    for key, value in state.items():
        torch.testing.assert_close(ranks[0][key], value, atol=2e-5, rtol=1e-4, msg=key)


def _nan_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from ssl_distill.engine import NonFiniteLossError
    from ssl_distill.engine.distributed import init_distributed

    cfg = tiny_config("mae/tiny_mnist.yaml", Path(out) / "run", "data.batch_size=8", "train.max_steps=6")  # log_every=1
    trainer = Trainer(cfg, init_distributed())
    forward = trainer.objective.forward

    def poisoned(batch, step):  # only rank 1's loss is NaN, at step 2
        output = forward(batch, step)
        if rank == 1 and step == 2:
            output.loss = output.loss * float("nan")
        return output

    trainer.objective.forward = poisoned
    try:
        trainer.fit()
    except NonFiniteLossError as error:
        (Path(out) / f"rank{rank}.txt").write_text(f"{trainer.step} {error}")
    torch.distributed.destroy_process_group()


def test_a_nan_on_one_rank_stops_every_rank_at_the_same_read(tmp_path):
    context = mp.spawn(_nan_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.time() + 120
    while not context.join(timeout=1):
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("a rank hung after the other one met a NaN loss")
    stopped = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    assert stopped[1].startswith("3 loss is nan at step 2 ")
    assert stopped[0].startswith("3 a non-finite loss on another rank by step 2")


def _losses(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def _wait_for_rows(run_dir: Path, rows: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "metrics.csv").is_file() and len(_losses(run_dir)) >= rows:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{run_dir}/metrics.csv never reached {rows} rows")


def _descendants(pid: int) -> list[int]:
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return children + [d for c in children for d in _descendants(c)]


MAE = ["train.max_steps=24", "optim.lr=1e-3", "train.checkpoint_every=1000"]


@pytest.mark.slow
def test_signal_writes_a_checkpoint_at_that_step_and_the_rerun_continues_exactly(tmp_path):
    reference = train(tiny_config("mae/tiny_mnist.yaml", tmp_path / "reference", *MAE))
    command = [sys.executable, "-m", "ssl_distill.cli", "train", str(CONFIGS / "mae/tiny_mnist.yaml"), *TINY, f"run.out_dir={tmp_path / 'stopped'}", *MAE]
    run_dir = tmp_path / "stopped" / "mae_tiny_mnist"
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=REPO)
    _wait_for_rows(run_dir, 5)
    process.send_signal(signal.SIGUSR1)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 3, err
    saved = ckpt.list_checkpoints(run_dir / "checkpoints")
    assert len(saved) == 1
    step = int(ckpt.PATTERN.match(saved[0].name).group(1))
    assert 5 <= step < 24 and f"stopped at step {step}" in err
    assert len(_losses(run_dir)) == step
    finished = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert finished.returncode == 0, finished.stderr
    np.testing.assert_allclose(_losses(run_dir), reference.losses, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_submitit_local_executor_trains_survives_preemption_and_returns_its_result(tmp_path):
    cfg = tiny_config("mae/tiny_mnist.yaml", tmp_path, *MAE)
    job = submit(cfg, local=True)
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    _wait_for_rows(run_dir, 5)
    tasks = [pid for pid in _descendants(job._process.pid) if b"submitit.core._submit" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    # the preemption / time-limit signal SLURM would send, to the trainer (not submitit's controller)
    assert signal_run(run_dir) == (tasks[0], "SIGUSR2")
    result = job.result()
    assert result["steps"] == 24 and Path(result["backbone"]).is_file()
    logs = "".join(p.read_text() for p in Path(job.paths.folder).glob("*_log.*"))
    assert "stopped at step" in logs  # the first attempt saved at the signal, the requeued one resumed
    reference = train(tiny_config("mae/tiny_mnist.yaml", tmp_path / "reference", *MAE))
    np.testing.assert_allclose(_losses(run_dir), reference.losses, rtol=0, atol=1e-6)


def test_crash_while_writing_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config("mae/tiny_mnist.yaml", tmp_path, "train.max_steps=4", "train.checkpoint_every=2"))
    trainer.fit(stop_at=2)
    good = ckpt.list_checkpoints(trainer.checkpoint_dir)
    assert [p.name for p in good] == ["checkpoint_00000002.pt"]

    def dies_halfway(payload, path):
        path.write_bytes(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", dies_halfway)
    trainer.step = 3
    with pytest.raises(RunError, match="no space left on .* while writing checkpoint 3; the previous checkpoint .*_00000002.pt is intact"):
        trainer.save_checkpoint()
    monkeypatch.undo()
    assert ckpt.list_checkpoints(trainer.checkpoint_dir) == good
    assert sorted(p.name for p in trainer.checkpoint_dir.iterdir()) == [good[0].name]  # no temp file left
    path, state = ckpt.load_latest(trainer.checkpoint_dir)
    assert path == good[0] and state["step"] == 2
    # a damaged newest file (say, a disk error after the rename) falls back to the older one
    (trainer.checkpoint_dir / "checkpoint_00000003.pt").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        assert ckpt.load_latest(trainer.checkpoint_dir)[0] == good[0]
    resumed = Trainer(load_config(CONFIGS / "mae/tiny_mnist.yaml", [*TINY, f"run.out_dir={tmp_path}", "train.max_steps=4"]))
    assert resumed.maybe_resume() == good[0] and resumed.step == 2
