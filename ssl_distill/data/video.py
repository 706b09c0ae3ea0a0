"""Video clips read with decord, for video pretraining and evaluation.

A source is an EchoNet-style folder (`FileList.csv` + `Videos/`, optional `Masks/<FileName>.npy`),
a CSV of video paths (a `path` column, optional `label`/`class_name`, `EF` and `split` columns; paths
relative to the CSV) or a list of paths. Labels: 'Normal' -> 0, any other class name -> 1, integers
as they are, unknown -> -1.

Bad files (missing, corrupt, truncated, too short for one clip) never stop a run: the item is drawn
from the next video instead, with a warning naming the file; `skipped` counts those events here and
per item, since with DataLoader workers the dataset's own counters live in the workers.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from decord import DECORDError, VideoReader
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from ssl_distill.data.bundled import cache_dir
from ssl_distill.data.echo import write_synthetic_echo
from ssl_distill.data.loader import seeded_call
from ssl_distill.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ssl_distill.registry import DATASETS

VIDEO_SUFFIXES = {".avi", ".mp4", ".mkv", ".mov", ".webm"}
# EchoNet-Pediatric keeps fold ids 0-9 in `Split`
FOLDS = {"train": {str(f) for f in range(8)}, "val": {"8"}, "test": {"9"}}
READ_ERRORS = (DECORDError, RuntimeError, OSError, ValueError)


@dataclass
class VideoEntry:
    path: Path
    label: int = -1
    ef: float = math.nan
    masks: Path | None = None  # .npy (T, H, W) per-frame labels


def _label(value: str | None) -> int:
    value = (value or "").strip()
    if not value:
        return -1
    if value.lstrip("-").isdigit():
        return int(value)
    return 0 if value == "Normal" else 1


def _float(value: str | None) -> float:
    try:
        return float(value) if value else math.nan
    except ValueError:
        return math.nan


def _in_split(value: str, split: str) -> bool:
    split, value = split.lower(), value.strip()
    if split == "all":
        return True
    if value.isdigit() and split in FOLDS:
        return value in FOLDS[split]
    return value.lower() == split


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def filelist_entries(root: str | Path, split: str = "all") -> list[VideoEntry]:
    """Entries of an EchoNet-style folder; `FileName` may lack the extension (any video suffix)."""
    root = Path(root)
    rows = [row for row in _read_csv(root / "FileList.csv") if _in_split(row.get("Split", ""), split)]
    videos = {p.stem: p for p in sorted((root / "Videos").glob("*")) if p.suffix.lower() in VIDEO_SUFFIXES}
    entries = []
    for row in rows:
        name = row["FileName"]
        stem = Path(name).stem if Path(name).suffix.lower() in VIDEO_SUFFIXES else name
        masks = root / "Masks" / f"{stem}.npy"
        entries.append(
            VideoEntry(
                path=videos.get(stem, root / "Videos" / name),
                label=_label(row.get("Label")),
                ef=_float(row.get("EF")),
                masks=masks if masks.is_file() else None,
            )
        )
    return entries


def csv_entries(path: str | Path, split: str = "all") -> list[VideoEntry]:
    """Entries of a CSV with a `path` column (else the first column) and optional label, EF, split."""
    path = Path(path)
    rows = _read_csv(path)
    if not rows:
        return []
    columns = list(rows[0])
    path_column = "path" if "path" in columns else columns[0]
    label_column = next((c for c in ("label", "class_name", "Label") if c in columns), None)
    split_column = next((c for c in ("split", "Split") if c in columns), None)
    return [
        VideoEntry(
            path=path.parent / row[path_column],
            label=_label(row.get(label_column)) if label_column else -1,
            ef=_float(row.get("EF", row.get("ef"))),
        )
        for row in rows
        if split_column is None or _in_split(row[split_column], split)
    ]


def video_entries(source: str | Path | Sequence[str | Path], split: str = "all") -> list[VideoEntry]:
    """A folder with FileList.csv, a .csv file, or a list of video paths (unlabelled)."""
    if isinstance(source, (str, Path)):
        source = Path(source)
        if (source / "FileList.csv").is_file():
            return filelist_entries(source, split)
        if source.suffix.lower() == ".csv" and source.is_file():
            return csv_entries(source, split)
        raise FileNotFoundError(f"data.root: {source} is neither a folder with FileList.csv nor a CSV file")
    return [VideoEntry(Path(p)) for p in source]


class ClipSampler:
    """Clips of `num_frames` frames, `stride` apart, from an opened video, with one random resized crop
    (and optional horizontal flip) shared by all frames of the item, resized to `img_size` and normalised.

    K = clips_per_video > 1 gives K clips (random starts, or the centres of K equal stretches with
    'uniform'). `crop_scale=None` turns the crop off (the whole frame is resized). Draws from torch's
    global RNG: seed it (`seeded_call`) for reproducible clips.
    """

    def __init__(
        self,
        num_frames: int = 16,
        stride: int = 2,
        clip_sampling: str = "random",
        clips_per_video: int = 1,
        img_size: int = 112,
        crop_scale: Sequence[float] | None = (0.5, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if clip_sampling not in ("random", "uniform"):
            raise ValueError(f"clip_sampling must be 'random' or 'uniform', got '{clip_sampling}'")
        if num_frames < 1 or stride < 1 or clips_per_video < 1:
            raise ValueError(
                f"num_frames, stride and clips_per_video must be >= 1, got {num_frames}, {stride}, {clips_per_video}"
            )
        self.num_frames, self.stride = num_frames, stride
        self.clip_sampling, self.clips_per_video = clip_sampling, clips_per_video
        self.img_size, self.hflip = img_size, hflip
        self.crop_scale = None if crop_scale is None else tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.mean, self.std = list(mean), list(std)

    @property
    def span(self) -> int:
        """Source frames covered by one clip."""
        return (self.num_frames - 1) * self.stride + 1

    def _starts(self, total: int) -> torch.Tensor:
        """(K,) first frame of each clip."""
        last = total - self.span
        if self.clip_sampling == "random":
            return torch.randint(0, last + 1, (self.clips_per_video,)).sort().values
        return ((torch.arange(self.clips_per_video) + 0.5) * (last + 1) / self.clips_per_video).long()

    def read_clips(
        self, reader: VideoReader, masks: np.ndarray | None = None, masks_name: str = "masks"
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 frames (K, T, H, W, 3) from a decord reader, and the same frames of per-frame masks
        (total frames, H, W) -> (K, T, H, W), or None."""
        total = len(reader)
        if total < self.span:
            raise ValueError(
                f"{total} frames, fewer than one clip ({self.num_frames} frames at stride {self.stride})"
            )
        indices = self._starts(total)[:, None] + self.stride * torch.arange(self.num_frames)
        frames = reader.get_batch(indices.flatten().tolist()).asnumpy()
        frames = frames.reshape(*indices.shape, *frames.shape[1:])
        if masks is None:
            return frames, None
        if masks.shape != (total, *frames.shape[2:4]):
            raise ValueError(f"{masks_name} have shape {masks.shape}, the video {(total, *frames.shape[2:4])}")
        return frames, np.asarray(masks[indices.numpy()])

    def to_tensors(self, frames: np.ndarray, masks: np.ndarray | None) -> dict[str, torch.Tensor]:
        """{'video': (C, T, H, W) or (K, C, T, H, W) float[, 'frame_masks': (T, H, W) or (K, T, H, W) long]}."""
        k, t = frames.shape[:2]
        video = torch.from_numpy(frames).flatten(0, 1).permute(0, 3, 1, 2)  # (K*T, C, H, W)
        target = None if masks is None else torch.from_numpy(masks).flatten(0, 1)
        size = [self.img_size, self.img_size]
        if self.crop_scale is None:
            box = (0, 0, *video.shape[-2:])
        else:
            box = RandomResizedCrop.get_params(video, list(self.crop_scale), list(self.crop_ratio))
        video = F.resized_crop(video, *box, size, antialias=True)
        if target is not None:
            target = F.resized_crop(target, *box, size, interpolation=InterpolationMode.NEAREST)
        if self.hflip > 0 and torch.rand(()) < self.hflip:
            video = F.horizontal_flip(video)
            target = None if target is None else F.horizontal_flip(target)
        video = F.normalize(F.to_dtype(video, torch.float32, scale=True), self.mean, self.std)
        video = video.unflatten(0, (k, t)).transpose(1, 2)  # (K, C, T, H, W)
        item = {"video": video}
        if target is not None:
            item["frame_masks"] = target.unflatten(0, (k, t)).long()
        if self.clips_per_video == 1:
            item = {key: value[0] for key, value in item.items()}
        return item


class VideoClipDataset(ClipSampler, Dataset):
    """Clips of the videos of a source (see `ClipSampler` for the clip settings).

    Items: {'video': (C, T, H, W) float, or (K, C, T, H, W) when clips_per_video K > 1,
    'label': int, 'ef': float (nan when unknown), 'index': int (the video actually read),
    'skipped': int (bad files passed over for this item)}, plus 'frame_masks' (T, H, W) or
    (K, T, H, W) long with `with_masks`. K > 1 gives one item per video holding K clips, for
    clip-averaged evaluation. `dataset[(index, seed)]` seeds the clip starts and the crop;
    `dataset[index]` uses seed = index. A bad file is replaced by the next video; `max_failures`
    bad files in a row raise a RuntimeError naming them.
    """

    def __init__(
        self,
        source: str | Path | Sequence[str | Path],
        split: str = "all",
        limit: int | None = None,
        num_frames: int = 16,
        stride: int = 2,
        clip_sampling: str = "random",
        clips_per_video: int = 1,
        img_size: int = 112,
        crop_scale: Sequence[float] | None = (0.5, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        with_masks: bool = False,
        max_failures: int = 16,
    ) -> None:
        super().__init__(num_frames, stride, clip_sampling, clips_per_video, img_size, crop_scale, crop_ratio, hflip, mean, std)
        self.entries = video_entries(source, split)[:limit]
        if not self.entries:
            raise FileNotFoundError(f"no videos in {source} for split '{split}'")
        if with_masks and not any(entry.masks for entry in self.entries):
            raise FileNotFoundError(f"with_masks: no Masks/<FileName>.npy found for the videos of {source}")
        self.with_masks = with_masks
        self.max_failures = max_failures
        self.skipped = 0
        self.bad_files: set[str] = set()

    @property
    def provides(self) -> frozenset[str]:
        keys = {"video", "label", "ef", "index", "skipped"}
        return frozenset(keys | {"frame_masks"} if self.with_masks else keys)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, key)
        return seeded_call(seed, lambda: self._item(index))

    def _item(self, index: int) -> dict[str, Any]:
        failed = []
        for attempt in range(min(len(self), self.max_failures)):
            current = (index + attempt) % len(self)
            entry = self.entries[current]
            try:
                frames, masks = self._read(entry)
            except READ_ERRORS as error:
                self.skipped += 1
                self.bad_files.add(str(entry.path))
                failed.append(str(entry.path))
                warnings.warn(
                    f"skipping unreadable video {entry.path}: {str(error).strip()[:200]}", stacklevel=2
                )
                continue
            return {
                "label": entry.label,
                "ef": entry.ef,
                "index": current,
                "skipped": attempt,
                **self.to_tensors(frames, masks),
            }
        raise RuntimeError(
            f"{len(failed)} videos in a row could not be read (see the warnings): {', '.join(failed)}"
        )

    def _read(self, entry: VideoEntry) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 frames (K, T, H, W, 3) and masks (K, T, H, W) or None."""
        if self.with_masks and entry.masks is None:
            raise FileNotFoundError("no mask file")
        reader = VideoReader(str(entry.path), num_threads=1)
        masks = np.load(entry.masks, mmap_mode="r") if self.with_masks else None
        return self.read_clips(reader, masks, f"masks {entry.masks}")


def synthetic_echo(preset: str = "adult", n: int = 48, seed: int = 0) -> Path:
    """The default synthetic echo set (64 px, 50 FPS), generated once into the cache dir."""
    root = cache_dir() / f"synth_echo_{preset}_{n}_{seed}"
    if (root / "FileList.csv").is_file():
        return root
    tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_synthetic_echo(tmp, n, preset=preset, seed=seed, size=64)
    try:
        tmp.rename(root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


@DATASETS.register("echo_video")
def echo_video(
    root: str | None = None,
    split: str = "train",
    limit: int | None = None,
    preset: str = "adult",
    synthetic_videos: int = 48,
    synthetic_seed: int = 0,
    **options: Any,
) -> VideoClipDataset:
    """Echo (or any) video clips from `root` (see `video_entries`); without a root, the synthetic
    set `synth_echo_<preset>_<synthetic_videos>_<synthetic_seed>` from the cache dir."""
    source = root if root is not None else synthetic_echo(preset, synthetic_videos, synthetic_seed)
    return VideoClipDataset(source, split=split, limit=limit, **options)
