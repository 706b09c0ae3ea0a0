"""Video clips read with PyAV, for video pretraining and evaluation.

A source is an EchoNet-style folder (`FileList.csv` + `Videos/`, optional `Masks/<FileName>.npy`),
a CSV of video paths (a `path` column, optional `label`/`class_name`, `EF` and `split` columns; paths
relative to the CSV) or a list of paths. Labels: 'Normal' -> 0, any other class name -> 1, integers
as they are, unknown -> -1.

Bad files (missing, corrupt, truncated, too short for one clip) never stop a run: the item is drawn
from the next video instead, with a warning naming the file; `skipped` counts those events here and
per item, since with DataLoader workers the dataset's own counters live in the workers.

Files stay open (an LRU per process, `ReaderCache` of `VideoFile`s): a video is opened and indexed
once, and a clip is read from the keyframe before it, so its cost depends on the keyframe interval,
not on where the clip sits in the file. Frames are those decord gives (tested); PyAV decodes in the
calling thread, which costs less CPU per clip than decord's threaded decoder (0.62-0.76x, for 1.2-1.5x
its clips/s) and is safe in forked DataLoader workers (benchmarks/README.md, "Loader"). `echo_frames`
reads with the same class.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from av.video.reformatter import VideoReformatter
from decord import DECORDError
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from ssl_distill.data.bundled import cache_dir
from ssl_distill.data.echo import SYNTHETIC_VERSION, write_synthetic_echo
from ssl_distill.data.images import read_csv_rows
from ssl_distill.data.loader import SeededDataset
from ssl_distill.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ssl_distill.errors import DataError
from ssl_distill.registry import DATASETS
from ssl_distill.schema import choice, ranged

VIDEO_SUFFIXES = {".avi", ".mp4", ".mkv", ".mov", ".webm"}
# EchoNet-Pediatric keeps fold ids 0-9 in `Split`
FOLDS = {"train": {str(f) for f in range(8)}, "val": {"8"}, "test": {"9"}}
READ_ERRORS = (av.error.FFmpegError, DECORDError, RuntimeError, OSError, ValueError)  # PyAV's, decord's


class VideoFile:
    """An open video read with PyAV, decoding in the calling thread (no FFmpeg threads: DataLoader
    workers are the parallelism, and a fork never meets a running decoder). Frame i is the i-th
    presentation timestamp among the stream's packets, indexed once at open without decoding.

    `read(indices)` seeks to the keyframe at or before the first index and decodes forward to the
    last, converting only the wanted frames to RGB. Where timestamps do not name the frames
    (duplicates; B-frames whose packets carry decode-ordered stamps, as H.264 in AVI does; a seek
    that lands past the first index) it decodes from the start of the file, counting frames.
    """

    def __init__(self, source: str | bytes) -> None:
        self.source = source  # a path, or a file's bytes (a shard member)
        self.path = source if isinstance(source, str) else f"<{len(source)} bytes>"
        self.container = self._open()
        if not self.container.streams.video:
            raise ValueError("no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "NONE"
        # one scaler context for the file: `frame.to_ndarray(format=...)` builds a new one per frame,
        # which cost 4.6x the decode of a 64 px frame (same pixels either way)
        self.reformatter = VideoReformatter()
        packets = [p.pts if p.pts is not None else p.dts for p in self.container.demux(self.stream)]
        stamps = [stamp for stamp in packets if stamp is not None]  # in decode order
        self.pts = sorted(stamps)
        self.index = {stamp: i for i, stamp in enumerate(self.pts)}
        reordered = stamps != self.pts  # B-frames with real presentation stamps
        unique = len(self.index) == len(self.pts)
        self.timed = unique and (reordered or not self.stream.codec_context.has_b_frames)

    def __len__(self) -> int:
        return len(self.pts)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 RGB frames (N, H, W, 3) at ascending frame `indices`."""
        frames = self._from_keyframe(indices) if self.timed else None
        if frames is None:
            frames = self._from_start(indices)
        return np.stack([frames[i] for i in indices])

    def _from_keyframe(self, indices: Sequence[int]) -> dict[int, np.ndarray] | None:
        """The wanted frames decoded from the keyframe before the first, or None where the
        timestamps do not lead to them."""
        self.container.seek(self.pts[indices[0]], stream=self.stream, backward=True, any_frame=False)
        wanted, frames = set(indices), {}
        for frame in self.container.decode(self.stream):
            i = self.index.get(frame.pts)
            if i is None or (not frames and i > indices[0]):
                return None
            if i in wanted:
                frames[i] = self._rgb(frame)
            if i >= indices[-1]:
                return frames if len(frames) == len(wanted) else None
        return None

    def _rgb(self, frame: av.VideoFrame) -> np.ndarray:
        return self.reformatter.reformat(frame, format="rgb24").to_ndarray()

    def _open(self) -> av.container.InputContainer:
        return av.open(self.source if isinstance(self.source, str) else io.BytesIO(self.source))

    def _from_start(self, indices: Sequence[int]) -> dict[int, np.ndarray]:
        wanted, frames = set(indices), {}
        with self._open() as container:
            container.streams.video[0].thread_type = "NONE"
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    frames[i] = self._rgb(frame)
                if i >= indices[-1]:
                    return frames
        raise ValueError(f"frame {indices[-1]} of {len(self)} does not decode")


class ReaderCache:
    """Up to `capacity` open videos (`open_reader(path)`, a `VideoFile` by default) kept, least
    recently used dropped first (0 keeps none). They never cross processes: a forked child (a
    DataLoader worker) starts every cache empty and leaves the ones it inherited alone (reading one
    would move the parent's file offset; a decord reader's decoder thread stays in the parent, and
    destroying that reader in the child hangs); pickling (spawn) drops them."""

    def __init__(self, capacity: int, open_reader: Callable[[str], Any] = VideoFile) -> None:
        self.capacity, self.open_reader = capacity, open_reader
        self.readers: OrderedDict[str, Any] = OrderedDict()
        _CACHES.add(self)

    def get(self, path: Path) -> Any:
        key = str(path)
        reader = self.readers.pop(key, None)
        if reader is None:
            reader = self.open_reader(key)
        if self.capacity > 0:
            self.readers[key] = reader
            while len(self.readers) > self.capacity:
                self.readers.popitem(last=False)
        return reader

    def discard(self, path: Path) -> None:
        """Close the reader of `path` (after a failed read), if open."""
        self.readers.pop(str(path), None)

    def __getstate__(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "open_reader": self.open_reader}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)


_CACHES: weakref.WeakSet[ReaderCache] = weakref.WeakSet()
_INHERITED: list[OrderedDict[str, Any]] = []  # readers a forked child got from its parent: never touched


def _drop_inherited_readers() -> None:
    for cache in list(_CACHES):
        _INHERITED.append(cache.readers)
        cache.readers = OrderedDict()


os.register_at_fork(after_in_child=_drop_inherited_readers)


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


def filelist_entries(root: str | Path, split: str = "all") -> list[VideoEntry]:
    """Entries of an EchoNet-style folder; `FileName` may lack the extension (any video suffix)."""
    root = Path(root)
    rows = read_csv_rows(root / "FileList.csv")
    if "FileName" not in rows[0]:
        raise DataError(f"{root / 'FileList.csv'}: needs a 'FileName' column (EchoNet layout), has {list(rows[0])}")
    rows = [row for row in rows if _in_split(row.get("Split", ""), split)]
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
    rows = read_csv_rows(path)
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
        self, video: VideoFile, masks: np.ndarray | None = None, masks_name: str = "masks"
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 frames (K, T, H, W, 3) from an open video, and the same frames of per-frame masks
        (total frames, H, W) -> (K, T, H, W), or None."""
        total = len(video)
        if total < self.span:
            raise ValueError(
                f"{total} frames, fewer than one clip ({self.num_frames} frames at stride {self.stride})"
            )
        indices = self._starts(total)[:, None] + self.stride * torch.arange(self.num_frames)
        frames = np.stack([video.read(clip) for clip in indices.tolist()])
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


class VideoClipDataset(ClipSampler, SeededDataset):
    """Clips of the videos of a source (see `ClipSampler` for the clip settings).

    Items: {'video': (C, T, H, W) float, or (K, C, T, H, W) when clips_per_video K > 1,
    'label': int, 'ef': float (nan when unknown), 'index': int (the video actually read),
    'skipped': int (bad files passed over for this item)}, plus 'frame_masks' (T, H, W) or
    (K, T, H, W) long with `with_masks`. K > 1 gives one item per video holding K clips, for
    clip-averaged evaluation. `dataset[(index, seed)]` seeds the clip starts and the crop;
    `dataset[index]` uses seed = index. A bad file is replaced by the next video; `max_failures`
    bad files in a row raise a DataError naming them. `open_readers`: videos kept open per process
    (`ReaderCache`; fewer for large videos).
    """

    def __init__(
        self,
        source: str | Path | Sequence[str | Path],
        split: str = "all",
        limit: int | None = None,
        with_masks: bool = False,
        max_failures: int = 16,
        open_readers: int = 16,
        **clip: Any,
    ) -> None:
        super().__init__(**clip)  # the ClipSampler settings
        self.entries = video_entries(source, split)[:limit]
        if not self.entries:
            raise FileNotFoundError(f"no videos in {source} for split '{split}'")
        if with_masks and not any(entry.masks for entry in self.entries):
            raise FileNotFoundError(f"with_masks: no Masks/<FileName>.npy found for the videos of {source}")
        self.with_masks = with_masks
        self.max_failures = max_failures
        self.readers = ReaderCache(open_readers)
        self.skipped = 0
        self.bad_files: set[str] = set()

    @property
    def provides(self) -> frozenset[str]:
        keys = {"video", "label", "ef", "index", "skipped"}
        return frozenset(keys | {"frame_masks"} if self.with_masks else keys)

    def __len__(self) -> int:
        return len(self.entries)

    def _item(self, index: int) -> dict[str, Any]:
        failed = []
        for attempt in range(min(len(self), self.max_failures)):
            current = (index + attempt) % len(self)
            entry = self.entries[current]
            try:
                frames, masks = self._read(entry)
            except READ_ERRORS as error:
                self.readers.discard(entry.path)
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
        raise DataError(f"{len(failed)} videos in a row could not be read: {', '.join(failed)}")

    def _read(self, entry: VideoEntry) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 frames (K, T, H, W, 3) and masks (K, T, H, W) or None."""
        if self.with_masks and entry.masks is None:
            raise FileNotFoundError("no mask file")
        masks = np.load(entry.masks, mmap_mode="r") if self.with_masks else None
        return self.read_clips(self.readers.get(entry.path), masks, f"masks {entry.masks}")


def synthetic_echo(preset: str = "adult", n: int = 48, seed: int = 0) -> Path:
    """The default synthetic echo set (64 px, 50 FPS), generated once into the cache dir (a folder
    per generator version, so a changed generator never reuses old files)."""
    root = cache_dir() / f"synth_echo_{preset}_{n}_{seed}_v{SYNTHETIC_VERSION}"
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


@dataclass
class SyntheticEchoOptions:
    """The synthetic set used when `data.root` is not given."""

    preset: str = choice("adult", ("adult", "pediatric", "camus"))
    synthetic_videos: int = ranged(48, "[8, inf)")
    synthetic_seed: int = ranged(0, "[0, inf)")


@dataclass
class EchoVideoOptions(SyntheticEchoOptions):
    """`data.options` of `echo_video`: the clip sampling and transform of `VideoClipDataset`."""

    num_frames: int = ranged(16, "[1, inf)")
    stride: int = ranged(2, "[1, inf)")
    clip_sampling: str = choice("random", ("random", "uniform"))
    clips_per_video: int = ranged(1, "[1, inf)")
    img_size: int = ranged(112, "[1, inf)")
    crop_scale: list[float] | None = ranged([0.5, 1.0], "(0, 1]")  # None: no crop
    crop_ratio: list[float] = ranged([3 / 4, 4 / 3], "(0, inf)")
    hflip: float = ranged(0.0, "[0, 1]")
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = ranged(list(IMAGENET_STD), "(0, inf)")
    with_masks: bool = False
    max_failures: int = ranged(16, "[1, inf)")
    open_readers: int = ranged(16, "[1, inf)")  # videos kept open per process


@DATASETS.register("echo_video", config=EchoVideoOptions)
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
    set `synth_echo_<preset>_<synthetic_videos>_<synthetic_seed>_v<version>` from the cache dir."""
    source = root if root is not None else synthetic_echo(preset, synthetic_videos, synthetic_seed)
    return VideoClipDataset(source, split=split, limit=limit, **options)
