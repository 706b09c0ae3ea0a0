"""Datasets (sources), view transforms and the resumable loader."""

from ssl_distill.data import image_text, multiview  # noqa: F401  (register their datasets and views)
from ssl_distill.data import neighbors as neighbors
from ssl_distill.data import shape_sets as shape_sets
from ssl_distill.data.echo_frames import EchoFrames as EchoFrames
from ssl_distill.data.images import ImageSource, Sample, build_source
from ssl_distill.data.loader import ResumableSampler, ViewDataset, build_loader, seeded_call
from ssl_distill.data.shards import ShardSource as ShardSource
from ssl_distill.data.transforms import build_transform, eval_transform
from ssl_distill.data.video import VideoClipDataset as VideoClipDataset

__all__ = [
    "ImageSource",
    "ResumableSampler",
    "Sample",
    "ViewDataset",
    "build_loader",
    "build_source",
    "build_transform",
    "eval_transform",
    "seeded_call",
]
