"""WebDataset shards: writing sources, reading them back in order, the training stream under ranks and
workers, exact resume, corrupt or missing members, URLs and pipes, video shards."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ssl_distill.cli import main
from ssl_distill.data import build_loader, build_source, build_transform
from ssl_distill.data.echo import write_synthetic_echo
from ssl_distill.data.shards import ShardSource, deal, shard_input, write_shards
from ssl_distill.data.video import VideoClipDataset

torch.set_num_threads(1)
EVAL_VIEW = OmegaConf.create({"name": "eval", "img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
CLIP = dict(num_frames=4, stride=2, img_size=32)


@pytest.fixture(scope="module")
def shapes_shards(tmp_path_factory) -> Path:
    """60 shapes (with masks) in shards of 8: seven of 8 and one of 4."""
    out = tmp_path_factory.mktemp("shards") / "shapes" / "train"
    write_shards(shard_input("shapes", "train", 60), out, shard_size=8)
    return out.parent


def _epoch(stream, epoch: int, start: int = 0, workers: int = 2) -> list[dict]:
    stream.set_epoch(epoch, start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(build_loader(stream, stream, workers))


def test_shards_read_back_as_the_source_in_order(shapes_shards):
    manifest = json.loads((shapes_shards / "train" / "shards.json").read_text())
    assert [s["count"] for s in manifest["shards"]] == [8] * 7 + [4] and manifest["has_masks"]
    source, shards = build_source("shapes", split="train", limit=60), build_source("shards", str(shapes_shards))
    assert isinstance(shards, ShardSource) and len(shards) == 60 and shards.classes == source.classes
    for original, read in zip([source[i] for i in range(60)], shards):
        assert np.array_equal(np.asarray(original.image), np.asarray(read.image))
        assert read.label == original.label and np.array_equal(read.mask, original.mask)
    part = shards.subset(10, 27)
    loader = torch.utils.data.DataLoader(part.for_loader(5), batch_size=5, num_workers=2, collate_fn=lambda b: b)
    assert [s.label for batch in loader for s in batch] == [int(source[i].label) for i in range(10, 27)]
    assert len(build_source("shards", str(shapes_shards), limit=13)) == 13
    assert manifest["shards"][0]["sha256"] == hashlib.sha256((shapes_shards / "train" / "shard-000000.tar").read_bytes()).hexdigest()


def test_the_same_data_give_the_same_shards_and_fingerprint(shapes_shards, tmp_path):
    write_shards(shard_input("shapes", "train", 60), tmp_path / "again", shard_size=8)
    assert (tmp_path / "again" / "shard-000003.tar").read_bytes() == (shapes_shards / "train" / "shard-000003.tar").read_bytes()
    assert build_source("shards", str(tmp_path / "again")).fingerprint == build_source("shards", str(shapes_shards)).fingerprint
    write_shards(shard_input("shapes", "val", 60), tmp_path / "other", shard_size=8)
    assert build_source("shards", str(tmp_path / "other")).fingerprint != build_source("shards", str(shapes_shards)).fingerprint


def test_folder_csv_bytes_and_captions(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.jpg")
    (tmp_path / "imgs" / "dog" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "list.csv").write_text("path,label,caption\nimgs/cat/0.jpg,cat,a cat\nimgs/dog/1.jpg,dog,a dog\n")
    with pytest.warns(UserWarning, match="skipping unreadable .*broken.png"):
        manifest = write_shards(shard_input(str(tmp_path / "imgs")), tmp_path / "folder", shard_size=3)
    assert manifest["count"] == 4 and manifest["skipped"][0].endswith("broken.png")
    with tarfile.open(tmp_path / "folder" / "shard-000000.tar") as tar:  # the file's own JPEG bytes
        assert tar.extractfile("000000000.jpg").read() == (tmp_path / "imgs" / "cat" / "0.jpg").read_bytes()
    write_shards(shard_input(str(tmp_path / "list.csv")), tmp_path / "csv", shard_size=8)
    samples = list(build_source("shards", str(tmp_path / "csv")))
    assert [(s.label, s.caption) for s in samples] == [(0, "a cat"), (1, "a dog")]


def test_stream_splits_ranks_and_workers_without_repeats(shapes_shards):
    source = build_source("shards", str(shapes_shards))
    assert sorted(len(slot) for slot in deal(source.spans(), 4)) == [2, 2, 2, 2]
    transform = build_transform(EVAL_VIEW)
    with pytest.warns(UserWarning, match="left out of every epoch"):  # 4 slots of 16, 16, 16, 12 samples, batches of 4
        streams = [source.stream(transform, 4, seed=1, rank=r, world_size=2, num_workers=2) for r in (0, 1)]
    assert streams[0].batches_per_epoch == streams[1].batches_per_epoch == 6 and streams[0].unused == 12
    seen = [torch.cat([b["index"] for b in _epoch(stream, 0)]) for stream in streams]
    everything = torch.cat(seen)
    assert len(everything) == 48 and len(set(everything.tolist())) == 48  # no sample twice across ranks
    batch = _epoch(streams[0], 0)[0]
    assert batch["views"][0].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 32, 32)
    assert batch["skipped"].tolist() == [0, 0, 0, 0]
    again = torch.cat([b["index"] for b in _epoch(streams[0], 0)])
    other_epoch = torch.cat([b["index"] for b in _epoch(streams[0], 1)])
    assert torch.equal(again, seen[0]) and not torch.equal(other_epoch, seen[0])
    with pytest.raises(ValueError, match="3 shards cannot feed 2 rank"):
        build_source("shards", str(shapes_shards), limit=20).stream(transform, 4, world_size=2, num_workers=2)


def test_resume_replays_the_epoch_exactly(shapes_shards):
    with pytest.warns(UserWarning, match="10 of 60 samples are left out"):  # slots of 32 and 28, batches of 5
        stream = build_source("shards", str(shapes_shards)).stream(build_transform(EVAL_VIEW), 5, seed=2, num_workers=2)
    full = _epoch(stream, 3)
    for start in (1, 4, 7):
        resumed = _epoch(stream, 3, start)
        assert len(resumed) == len(full) - start
        for a, b in zip(full[start:], resumed):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["views"][0], b["views"][0])


def _corrupt(shards: Path) -> None:
    """Replace the image of the first sample of shard 1 with garbage; cut shard 2 in half."""
    path = shards / "train" / "shard-000001.tar"
    with tarfile.open(path) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            data = b"garbage" if info.name == "000000008.png" else data
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    cut = shards / "train" / "shard-000002.tar"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])


def test_corrupt_and_missing_members_are_skipped_named_counted_and_replayed(shapes_shards, tmp_path):
    copy = tmp_path / "shapes"
    (copy / "train").mkdir(parents=True)
    for file in (shapes_shards / "train").iterdir():
        (copy / "train" / file.name).write_bytes(file.read_bytes())
    _corrupt(copy)
    stream = build_source("shards", str(copy)).stream(build_transform(EVAL_VIEW), 4, seed=0, num_workers=0)
    stream.set_epoch(0)
    with pytest.warns(UserWarning) as caught:
        batches = list(build_loader(stream, stream, 0))
    messages = [str(w.message) for w in caught if "shard member" in str(w.message)]
    assert any("shard-000001.tar 000000008: " in m for m in messages)
    assert any("missing shard member" in m and "shard-000002.tar" in m for m in messages)
    skipped = sum(int(b["skipped"].sum()) for b in batches)
    assert skipped == len(messages) == 4  # the corrupt image and the last 3 samples of the cut shard 2
    assert [m.split(".tar ")[1].split(":")[0] for m in messages if "missing shard member" in m] == ["#5", "#6", "#7"]
    assert sum(len(b["index"]) for b in batches) == 15 * 4 - skipped  # short batches, never refilled
    resumed = _epoch(stream, 0, 5, workers=0)
    assert all(torch.equal(a["index"], b["index"]) for a, b in zip(batches[5:], resumed))


def test_manifest_path_and_pipe_urls(shapes_shards):
    folder = shapes_shards / "train"
    expected = [s.label for s in build_source("shards", str(shapes_shards))]
    by_path = build_source("shards", str(folder / "shards.json"))
    piped = build_source("shards", str(folder / "shards.json"), shard_url=f"pipe:cat {folder}/{{name}}")
    all_piped = build_source("shards", f"pipe:cat {folder}/shards.json")  # names replace the manifest's
    assert piped.urls[0] == all_piped.urls[0] == f"pipe:cat {folder}/shard-000000.tar"
    assert [s.label for s in by_path] == [s.label for s in piped] == [s.label for s in all_piped] == expected
    (shapes_shards / "empty").mkdir(exist_ok=True)
    with pytest.raises(FileNotFoundError, match="no shards.json in"):
        build_source("shards", str(shapes_shards / "empty"))
    with pytest.raises(ValueError, match="apply to video shards"):
        build_source("shards", str(shapes_shards), clips_per_video=2)


def test_video_shards_decode_like_the_files(tmp_path):
    echo = write_synthetic_echo(tmp_path / "echo", 6, preset="adult", seed=1, size=40, frames=24)
    (echo / "Videos" / sorted((echo / "Videos").iterdir())[2].name).write_bytes(b"\x00" * 2000)  # garbage video
    with pytest.warns(UserWarning, match="skipping unreadable .*_0002.mp4"):
        assert main(["data", "shard", str(echo), str(tmp_path / "shards"), "--shard-size", "2", "--split", "all"]) == 0
    manifest = json.loads((tmp_path / "shards" / "shards.json").read_text())
    assert manifest["kind"] == "video" and manifest["count"] == 5 and len(manifest["skipped"]) == 1
    files = VideoClipDataset(echo, split="all", with_masks=True, **CLIP)
    shards = build_source("shards", str(tmp_path / "shards"), with_masks=True, **CLIP)
    ours, theirs = next(iter(shards)), files[(0, 0)]  # in order, the clip of sample i seeded with i
    assert torch.equal(ours["video"], theirs["video"]) and torch.equal(ours["frame_masks"], theirs["frame_masks"])
    assert ours["label"] == theirs["label"] and ours["ef"] == pytest.approx(theirs["ef"])
    with pytest.warns(UserWarning, match="1 of 5 samples are left out"):
        stream = shards.stream(None, 2, seed=0, num_workers=0)
    batch = _epoch(stream, 0, workers=0)[0]
    assert batch["video"].shape == (2, 3, 4, 32, 32) and set(stream.provides) <= set(batch)


def test_training_on_shards_with_two_workers_resumes_exactly(tmp_path):
    """64 MNIST digits in 8 shards, 2 workers, 4 steps an epoch: stopped at step 5 and resumed == uninterrupted."""
    from ssl_distill.engine import train

    from conftest import tiny_config

    write_shards(shard_input("mnist", "train", 64), tmp_path / "mnist", shard_size=8)
    common = ["train.max_steps=7", "optim.lr=1e-3", "data.name=shards", f"data.root={tmp_path / 'mnist'}", "data.num_workers=2"]
    full = train(tiny_config("mae/tiny_mnist.yaml", tmp_path / "a", *common))
    first = train(tiny_config("mae/tiny_mnist.yaml", tmp_path / "b", *common, "train.checkpoint_every=5"), stop_at=5)
    second = train(tiny_config("mae/tiny_mnist.yaml", tmp_path / "b", *common, "train.checkpoint_every=5"))
    assert (first.steps, second.start_step, len(full.losses)) == (5, 5, 7)
    np.testing.assert_allclose(first.losses + second.losses, full.losses, rtol=0, atol=1e-6)


def _ddp_rank(rank: int, port: int, root: str, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from ssl_distill.engine import Trainer
    from ssl_distill.engine.distributed import init_distributed

    from conftest import tiny_config

    cfg = tiny_config("mae/tiny_mnist.yaml", Path(out) / "ddp", "data.name=shards", f"data.root={root}", "data.num_workers=1", "data.batch_size=8", "train.max_steps=2")
    trainer = Trainer(cfg, init_distributed())
    seen, step = [], trainer.train_step
    trainer.train_step = lambda batch: seen.append(batch["index"]) or step(batch)
    trainer.fit()
    torch.save({"indices": torch.cat(seen), "state": trainer.objective.state_dict()}, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_read_their_own_shards(tmp_path):
    import socket

    import torch.multiprocessing as mp

    write_shards(shard_input("mnist", "train", 64), tmp_path / "mnist", shard_size=8)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_rank, args=(port, str(tmp_path / "mnist"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [len(r["indices"]) for r in ranks] == [16, 16]  # 2 steps of 8 per rank
    assert not set(ranks[0]["indices"].tolist()) & set(ranks[1]["indices"].tolist())
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key  # DDP kept the replicas in step
