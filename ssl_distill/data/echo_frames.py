"""Single frames of echo videos as an image source: the frames an image method trains on and the
frames segmentation transfer is scored on, drawn from the same videos as `echo_video`.

Each video gives `frames_per_video` frames at the centres of equal stretches of the video (the same
frames every time). A sample is the RGB frame, the video's label (Normal 0, Abnormal 1, unknown -1)
and, when the video has `Masks/<FileName>.npy`, that frame's left-ventricle mask (0/1; in a CAMUS-style
label map the LV cavity is class 1).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ssl_distill.data.images import ImageSource, Sample
from ssl_distill.data.video import (
    READ_ERRORS,
    SyntheticEchoOptions,
    VideoEntry,
    VideoFile,
    synthetic_echo,
    video_entries,
)
from ssl_distill.registry import DATASETS
from ssl_distill.schema import ranged

LV_CAVITY = 1


def frame_indices(total: int, count: int) -> np.ndarray:
    """(count,) evenly spaced frame indices of a `total`-frame video: the centres of `count` equal stretches."""
    return ((np.arange(count) + 0.5) * total / count).astype(np.int64)


def _nbytes(frames: np.ndarray, masks: np.ndarray | None) -> int:
    return frames.nbytes + (0 if masks is None else masks.nbytes)


class EchoFrames(ImageSource):
    """`frames_per_video` (F) frames of every video in `entries`, the first `limit` of them when given;
    sample i is frame i % F of video i // F.

    Decoded frames are kept in an LRU of up to `cache_mb` MB (per DataLoader worker): a video is
    decoded once for all its frames, and once in all when every video fits. A file that cannot be
    read raises with its path.
    """

    classes = ("Normal", "Abnormal")

    def __init__(
        self,
        entries: list[VideoEntry],
        frames_per_video: int = 8,
        limit: int | None = None,
        cache_mb: float = 512.0,
    ) -> None:
        if frames_per_video < 1:
            raise ValueError(f"frames_per_video must be >= 1, got {frames_per_video}")
        total = len(entries) * frames_per_video
        self.size = total if limit is None else min(limit, total)
        if self.size == 0:
            raise FileNotFoundError("echo_frames: no frames (no videos, or limit=0)")
        self.entries = entries[: -(-self.size // frames_per_video)]
        self.frames_per_video, self.cache_bytes = frames_per_video, cache_mb * 2**20
        self.has_masks = all(entry.masks is not None for entry in self.entries)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._cached_bytes = 0

    def __len__(self) -> int:
        return self.size

    def video(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 frames (F, H, W, 3) and LV masks (F, H, W) 0/1 (or None) of video `index`."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        entry = self.entries[index]
        try:
            reader = VideoFile(str(entry.path))
            chosen = frame_indices(len(reader), self.frames_per_video)
            frames = reader.read(chosen.tolist())
        except READ_ERRORS as error:
            raise OSError(f"cannot read video {entry.path}: {str(error).strip()[:200]}") from None
        masks = None
        if entry.masks is not None:
            labels = np.load(entry.masks, mmap_mode="r")
            if labels.shape != (len(reader), *frames.shape[1:3]):
                raise ValueError(
                    f"masks {entry.masks} have shape {labels.shape}, the video {(len(reader), *frames.shape[1:3])}"
                )
            masks = (np.asarray(labels[chosen]) == LV_CAVITY).astype(np.uint8)
        self._cache[index] = (frames, masks)
        self._cached_bytes += _nbytes(frames, masks)
        while len(self._cache) > 1 and self._cached_bytes > self.cache_bytes:
            self._cached_bytes -= _nbytes(*self._cache.popitem(last=False)[1])
        return frames, masks

    def sample(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"echo_frames: index {index} out of range for {len(self)} frames")
        video, frame = divmod(index, self.frames_per_video)
        frames, masks = self.video(video)
        mask = None if masks is None else masks[frame]
        return Sample(Image.fromarray(frames[frame]), self.entries[video].label, mask)


@dataclass
class EchoFramesOptions(SyntheticEchoOptions):
    """`data.options` of `echo_frames`."""

    frames_per_video: int = ranged(8, "[1, inf)")
    cache_mb: float = ranged(512.0, "[0, inf)")


@DATASETS.register("echo_frames", config=EchoFramesOptions)
def echo_frames(
    root: str | None = None,
    split: str = "train",
    limit: int | None = None,
    frames_per_video: int = 8,
    preset: str = "adult",
    synthetic_videos: int = 48,
    synthetic_seed: int = 0,
    cache_mb: float = 512.0,
) -> EchoFrames:
    """Frames of the videos of `root` (anything `echo_video` reads); without a root, of the synthetic set
    that `echo_video` uses with the same preset, count and seed. `limit` caps the number of frames,
    taken video by video; `cache_mb` bounds the decoded frames kept in memory."""
    source = Path(root) if root is not None else synthetic_echo(preset, synthetic_videos, synthetic_seed)
    entries = video_entries(source, split)
    if not entries:
        raise FileNotFoundError(f"echo_frames: no videos in {source} for split '{split}'")
    return EchoFrames(entries, frames_per_video, limit, cache_mb)
