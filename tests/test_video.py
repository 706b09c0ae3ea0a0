"""VideoClipDataset: clips, labels, seeded access, masks, bad files, open videos (exact frames, other
codecs and containers, LRU, forks), DataLoader workers, registry."""

from __future__ import annotations

import csv
import math
import os
import pickle
import shutil
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from decord import VideoReader
from torch.utils.data import DataLoader

from ssl_distill.data.echo import write_synthetic_echo, write_video
from ssl_distill.data.loader import ResumableSampler
from ssl_distill.data.video import ReaderCache, VideoClipDataset, VideoFile, video_entries
from ssl_distill.errors import DataError
from ssl_distill.registry import DATASETS

CLIP = dict(num_frames=8, stride=2, img_size=32)


@pytest.fixture(scope="module")
def echo(tmp_path_factory) -> Path:
    return write_synthetic_echo(
        tmp_path_factory.mktemp("echo"), 8, preset="adult", seed=1, size=40, frames=32
    )


@pytest.fixture(scope="module")
def bad_files(echo, tmp_path_factory) -> dict[str, Path]:
    """A good video, then garbage, truncated, missing and too-short files, then another good one."""
    folder = tmp_path_factory.mktemp("bad")
    videos = sorted((echo / "Videos").glob("*.mp4"))
    files = {"good": Path(shutil.copy(videos[0], folder / "good.mp4"))}
    (folder / "garbage.mp4").write_bytes(os.urandom(3000))
    data = videos[1].read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    write_video(folder / "short.mp4", np.zeros((4, 32, 32), np.uint8), fps=50)
    files |= {name: folder / f"{name}.mp4" for name in ("garbage", "truncated", "missing", "short")}
    files["good2"] = Path(shutil.copy(videos[2], folder / "good2.mp4"))
    return files


def test_items_and_labels_follow_the_filelist(echo):
    dataset = VideoClipDataset(echo, split="all", **CLIP)
    with open(echo / "FileList.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(dataset) == len(rows) == 8
    assert dataset.provides == {"video", "label", "ef", "index", "skipped"}
    for index, row in enumerate(rows):
        item = dataset[index]
        assert item["video"].shape == (3, 8, 32, 32) and item["video"].dtype == torch.float32
        assert item["label"] == (0 if row["Label"] == "Normal" else 1)
        assert item["ef"] == pytest.approx(float(row["EF"]))
        assert (item["index"], item["skipped"]) == (index, 0)
    assert len(VideoClipDataset(echo, split="train", **CLIP)) == sum(row["Split"] == "TRAIN" for row in rows)


def test_normalisation_uses_mean_and_std(echo):
    raw = VideoClipDataset(echo, crop_scale=None, mean=[0, 0, 0], std=[1, 1, 1], **CLIP)[0]["video"]
    normalised = VideoClipDataset(echo, crop_scale=None, mean=[0.5] * 3, std=[0.25] * 3, **CLIP)[0]["video"]
    assert 0 <= raw.min() and raw.max() <= 1
    torch.testing.assert_close(normalised, (raw - 0.5) / 0.25)


def test_seeded_access_is_reproducible(echo):
    dataset = VideoClipDataset(echo, hflip=0.5, **CLIP)
    first = dataset[(3, 1234)]["video"]
    assert torch.equal(first, dataset[(3, 1234)]["video"])
    assert not torch.equal(first, dataset[(3, 4321)]["video"])
    assert torch.equal(dataset[3]["video"], dataset[(3, 3)]["video"])
    state = torch.get_rng_state()
    dataset[(3, 99)]
    assert torch.equal(state, torch.get_rng_state())


def test_several_uniform_clips_per_video(echo):
    dataset = VideoClipDataset(echo, clip_sampling="uniform", clips_per_video=3, crop_scale=None, **CLIP)
    item = dataset[(0, 1)]
    assert item["video"].shape == (3, 3, 8, 32, 32)  # (K, C, T, H, W)
    assert torch.equal(item["video"], dataset[(0, 2)]["video"])  # uniform clips and no crop: seed-free
    assert not torch.equal(item["video"][0], item["video"][2])
    starts = dataset._starts(32)
    assert starts.tolist() == [3, 9, 15]  # centres of 3 equal stretches of the 18 valid starts


def test_frame_masks_follow_the_crop_and_flip(echo):
    dataset = VideoClipDataset(echo, with_masks=True, hflip=1.0, crop_scale=(0.6, 0.9), **CLIP)
    assert "frame_masks" in dataset.provides
    for index in range(4):
        item = dataset[(index, 7)]
        masks, grey = item["frame_masks"], item["video"][0]
        assert masks.shape == (8, 32, 32) and masks.dtype == torch.long
        assert set(masks.unique().tolist()) <= {0, 1} and masks.sum() > 0
        cavity = masks.float()[:, None]
        wall = torch.nn.functional.max_pool2d(cavity, 5, stride=1, padding=2)[:, 0].bool() & (masks == 0)
        assert grey[masks == 1].mean() < grey[wall].mean()  # dark blood inside the bright myocardium
    unflipped = VideoClipDataset(echo, with_masks=True, crop_scale=None, **CLIP)[(0, 7)]["frame_masks"]
    flipped = VideoClipDataset(echo, with_masks=True, crop_scale=None, hflip=1.0, **CLIP)[(0, 7)][
        "frame_masks"
    ]
    assert torch.equal(flipped, unflipped.flip(-1))


def test_bad_files_are_skipped_counted_and_warned(bad_files):
    dataset = VideoClipDataset(list(bad_files.values()), **CLIP)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = dataset[1], dataset[3]
    assert (first["index"], first["skipped"]) == (5, 4)  # garbage, truncated, missing, short -> good2
    assert (second["index"], second["skipped"]) == (5, 2)  # missing, short -> good2
    bad = [str(bad_files[name]) for name in ("garbage", "truncated", "missing", "short")]
    messages = [str(warning.message) for warning in caught]
    assert len(messages) == 6 and all(any(path in message for message in messages) for path in bad)
    assert dataset[0]["skipped"] == 0
    assert dataset.skipped == 6
    assert dataset.bad_files == set(bad)


def test_all_bad_files_raise_a_clear_error(bad_files):
    bad = [bad_files[name] for name in ("garbage", "truncated", "missing", "short")]
    dataset = VideoClipDataset(bad, **CLIP)
    with pytest.warns(UserWarning), pytest.raises(DataError, match="could not be read") as error:
        dataset[0]
    assert all(str(path) in str(error.value) for path in bad)


def test_dataloader_workers(echo, bad_files):
    files = sorted((echo / "Videos").glob("*.mp4")) + [bad_files["garbage"], bad_files["truncated"]]
    dataset = VideoClipDataset(files, **CLIP)
    sampler = ResumableSampler(len(dataset), batch_size=5, seed=0, shuffle=False)

    def run() -> tuple[torch.Tensor, int]:
        loader = DataLoader(dataset, batch_size=5, sampler=sampler, num_workers=2)
        batches = list(loader)
        return torch.cat([batch["video"] for batch in batches]), sum(
            int(batch["skipped"].sum()) for batch in batches
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        videos, skipped = run()
        again, _ = run()
    assert videos.shape == (10, 3, 8, 32, 32)
    assert skipped == 3  # garbage once and truncated twice (8 -> 9, 9 -> 0)
    assert torch.equal(videos, again)


def test_open_videos_read_the_frames_decord_decodes(echo):
    """Clips in random order (backwards too) through one open VideoFile per video == decord's frames."""
    videos = sorted((echo / "Videos").glob("*.mp4"))[:2]
    decoded = {path: VideoReader(str(path), num_threads=1).get_batch(list(range(32))).asnumpy() for path in videos}
    cache = ReaderCache(capacity=2)
    rng = np.random.default_rng(0)
    for _ in range(12):
        path = videos[rng.integers(len(videos))]
        start = int(rng.integers(0, 32 - 15))
        indices = list(range(start, start + 15, 2))
        assert np.array_equal(cache.get(path).read(indices), decoded[path][indices])
    assert len(cache.readers) == 2


def _write(path: Path, codec: str, frames: np.ndarray) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.codec_context.gop_size = 10
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@pytest.mark.parametrize("codec, suffix", [("mjpeg", "avi"), ("mpeg4", "avi"), ("libx264", "avi"), ("libx264", "mkv")])
def test_other_codecs_and_containers_read_exactly(codec, suffix, tmp_path):
    """EchoNet's AVIs (MJPEG), MPEG-4 part 2, H.264 in Matroska (no frame count in the header) and
    H.264 with B-frames in AVI (packet stamps in decode order: frames counted from the start) give
    the frames of a sequential decode."""
    grey = np.random.default_rng(0).integers(0, 200, (32, 32), dtype=np.uint8)
    frames = np.stack([np.repeat(np.roll(grey, 2 * t, axis=1)[..., None], 3, axis=-1) for t in range(40)])
    path = tmp_path / f"clip.{suffix}"
    _write(path, codec, frames)
    decoded = VideoReader(str(path), num_threads=1).get_batch(list(range(40))).asnumpy()
    video = VideoFile(str(path))
    assert len(video) == 40
    for start in (25, 0, 9, 10, 21):
        indices = list(range(start, start + 15, 3))
        assert np.array_equal(video.read(indices), decoded[indices])


def test_reader_cache_is_an_lru_per_process(echo):
    videos = sorted((echo / "Videos").glob("*.mp4"))[:3]
    cache = ReaderCache(capacity=2)
    first = cache.get(videos[0])
    cache.get(videos[1])
    assert cache.get(videos[0]) is first
    third = cache.get(videos[2])  # drops the least recently used: videos[1]
    assert list(cache.readers) == [str(videos[0]), str(videos[2])]
    cache.discard(videos[0])
    assert list(cache.readers) == [str(videos[2])]
    assert not pickle.loads(pickle.dumps(cache)).readers  # spawned workers open their own
    assert cache.get(videos[2]) is third
    none = ReaderCache(capacity=0)
    none.get(videos[0])
    assert not none.readers


def test_workers_forked_after_reads_in_the_main_process(echo):
    """Forked workers leave the videos opened here alone and open their own (reading one would move
    this process's file offset)."""
    dataset = VideoClipDataset(echo, crop_scale=None, **CLIP)
    here = torch.stack([dataset[index]["video"] for index in range(len(dataset))])
    kept = dict(dataset.readers.readers)
    assert len(kept) == len(dataset)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, timeout=60)
    assert torch.equal(torch.cat([batch["video"] for batch in loader]), here)
    assert dataset.readers.readers == kept  # still open here


def test_csv_and_list_sources(echo, tmp_path):
    videos = sorted((echo / "Videos").glob("*.mp4"))[:4]
    table = tmp_path / "clips.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "class_name", "split"])
        for i, path in enumerate(videos):
            writer.writerow(
                [os.path.relpath(path, tmp_path), "Normal" if i % 2 else "HCM", "train" if i < 3 else "test"]
            )
    entries = video_entries(table, split="train")
    assert [entry.label for entry in entries] == [1, 0, 1]
    assert all(entry.path.is_file() and math.isnan(entry.ef) for entry in entries)
    item = VideoClipDataset(table, split="test", **CLIP)[0]
    assert item["label"] == 0 and math.isnan(item["ef"])
    assert VideoClipDataset([str(p) for p in videos], **CLIP)[1]["label"] == -1


def test_fold_splits(tmp_path):
    root = write_synthetic_echo(tmp_path, 12, preset="pediatric", size=32, frames=16)
    sizes = {split: len(video_entries(root, split)) for split in ("train", "val", "test", "all", "3")}
    assert sizes == {"train": 8, "val": 2, "test": 2, "all": 12, "3": 2}


def test_registered_dataset_generates_its_default_once(monkeypatch, tmp_path, echo):
    monkeypatch.setenv("SSL_DISTILL_CACHE", str(tmp_path))
    build = DATASETS.get("echo_video")
    dataset = build(split="all", limit=3, synthetic_videos=4, synthetic_seed=5, **CLIP)
    root = tmp_path / "synth_echo_adult_4_5_v2"
    stamp = (root / "FileList.csv").stat().st_mtime_ns
    assert len(dataset) == 3 and dataset[0]["video"].shape == (3, 8, 32, 32)
    assert len(build(split="test", synthetic_videos=4, synthetic_seed=5, **CLIP)) == 2
    assert (root / "FileList.csv").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth_echo_adult_4_5_v2"]
    assert len(build(root=str(echo), split="val", **CLIP)) == 2
