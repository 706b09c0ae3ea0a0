"""WebDataset tar shards: any image source or a set of videos written as shards, and streamed back.

Writing (`ssl-distill data shard SRC OUT --shard-size N`, `write_shards`): OUT holds `shard-000000.tar`,
... of N samples each and `shards.json` (kind, classes, the sample count and SHA-256 of every shard),
written last: a folder with a manifest is complete. Every file is written under a temporary name and
renamed; the same data give the same bytes. The members of sample `<key>` (its index in the source):

    <key>.<jpg|png|...>  the image: the source file's own bytes, or PNG for in-memory images
    <key>.<mp4|avi|...>  or the video file's bytes (decoded with PyAV when read)
    <key>.cls            the label, an integer (class names are in the manifest)
    <key>.mask.png       per-pixel classes (uint8) of an image with a mask
    <key>.masks.npy      per-frame masks (T, H, W) of a video with a mask file
    <key>.txt            the caption (a CSV source's `caption` column)
    <key>.json           a video's extras: {"ef": ejection fraction or null}

Source files that cannot be read are skipped with a warning naming them and counted in the manifest.

Reading (`data.name=shards`, `data.root` = that folder, or a folder holding `<split>/shards.json`, or a
manifest path or URL): `ShardSource` yields the samples in manifest order (evaluation); for training,
`ShardSource.stream` gives a `ShardStream` of batches. Shards are read through `webdataset.gopen`, so
a shard may be a local path, a URL or a `pipe:` command (`shard_url`, e.g. "pipe:curl -s
https://host/data/{name}", names them). A corrupt or missing member is skipped with a warning naming
its shard and key, and counted in the batch's `skipped` entry, like an unreadable video.

Resume guarantee of `ShardStream`: exact replay. The shards are dealt once to the world_size x
max(num_workers, 1) reader slots (balanced by sample count), and every slot yields the same number of
batches per epoch (those of the smallest slot), which the DataLoader takes from its workers in turn.
Each epoch a slot reads its shards in a seeded order through a seeded shuffle buffer and cuts the stream
into batches, and each sample's augmentation is seeded by (seed, epoch, sample index): batch b of epoch e
is a function of (seed, e, b, the shards, world size, workers, batch size, shuffle buffer). Resuming at
batch b re-reads without decoding the part of the epoch already used and yields exactly the batches of
an uninterrupted run. This holds with corrupt members too: a corrupt member leaves its batch one sample
short instead of pulling in the next sample. No sample is seen twice in an epoch; the samples past the
last full batch of each slot's shuffled stream (a different few each epoch) are left out of that epoch.
Changing any of the settings above breaks replay (the trainer warns about changed config keys).
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import io
import json
import math
import os
import random
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, Subset, default_collate, get_worker_info
from tqdm import tqdm

from ssl_distill.data.images import IMAGE_SUFFIXES, Sample, build_source
from ssl_distill.data.loader import seeded_call, view_item
from ssl_distill.data.video import (
    READ_ERRORS,
    VIDEO_SUFFIXES,
    ClipSampler,
    VideoClipDataset,
    VideoEntry,
    VideoFile,
    video_entries,
)
from ssl_distill.registry import DATASETS
from ssl_distill.schema import choice, ranged

FORMAT = "ssl_distill.shards/1"
MANIFEST = "shards.json"
IMAGE_EXTS = tuple(suffix.lstrip(".") for suffix in sorted(IMAGE_SUFFIXES))
VIDEO_EXTS = tuple(suffix.lstrip(".") for suffix in sorted(VIDEO_SUFFIXES))
CORRUPT = (*READ_ERRORS, KeyError, SyntaxError, EOFError, zlib.error, Image.DecompressionBombError)
SHUFFLE_BUFFER = {"image": 1000, "video": 64}  # samples held per reader (encoded bytes)


class CorruptMember(ValueError):
    """A shard member that cannot be decoded (the message names the shard and the key)."""


# -- writing -----------------------------------------------------------------------------------------


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _file_of(source: Any, index: int) -> Path | None:
    """The image file behind item `index` of a file source (through `limit` subsets), else None."""
    if isinstance(source, Subset):
        return _file_of(source.dataset, source.indices[index])
    files = getattr(source, "files", None)
    return None if files is None else Path(files[index])


def _image_members(source: Any, index: int) -> dict[str, bytes]:
    sample = source[index]  # decodes
    if sample.skipped:  # a file source passed over the unreadable file and gave the next one
        raise OSError(f"cannot read image {_file_of(source, index)}")
    file = _file_of(source, index)
    members = {file.suffix.lower().lstrip("."): file.read_bytes()} if file else {"png": _png(sample.image)}
    members["cls"] = str(int(sample.label)).encode()
    if sample.mask is not None:
        mask = np.asarray(sample.mask)
        if mask.min() < 0 or mask.max() > 255:
            raise ValueError(f"mask values {mask.min()}..{mask.max()} do not fit mask.png (uint8)")
        members["mask.png"] = _png(Image.fromarray(mask.astype(np.uint8)))
    if sample.caption is not None:
        members["txt"] = sample.caption.encode()
    return members


def _video_members(entry: VideoEntry) -> dict[str, bytes]:
    data = entry.path.read_bytes()
    video = VideoFile(data)
    if len(video) == 0:
        raise ValueError("no frames")
    video.read([0])  # decodes the first frame
    members = {
        entry.path.suffix.lower().lstrip("."): data,
        "cls": str(entry.label).encode(),
        "json": json.dumps({"ef": None if math.isnan(entry.ef) else entry.ef}).encode(),
    }
    if entry.masks is not None:
        members["masks.npy"] = entry.masks.read_bytes()
    return members


@dataclass
class ShardInput:
    """What `write_shards` reads: `count` items, `members(i)` -> {extension: bytes} (raises for an unreadable
    item), `name(i)` for messages."""

    kind: str  # image | video
    count: int
    members: Callable[[int], dict[str, bytes]]
    name: Callable[[int], str]
    classes: tuple[str, ...] = ()
    has_masks: bool = False


def shard_input(src: str, split: str = "train", limit: int | None = None, **options: Any) -> ShardInput:
    """A registered dataset name (`mnist`, `shapes`, `echo_video`, ...), an ImageFolder tree, a CSV of
    images or videos, or an EchoNet-style folder (FileList.csv + Videos/)."""
    if src in DATASETS:
        source = build_source(src, None, split, limit, **options)
        return _video_input(source.entries) if isinstance(source, VideoClipDataset) else _image_input(source)
    path = Path(src)
    if path.suffix.lower() == ".csv" and path.is_file():
        entries = video_entries(path, split)
        if entries and entries[0].path.suffix.lower() in VIDEO_SUFFIXES:
            return _video_input(entries[:limit])
        return _image_input(build_source("csv", src, split, limit, **options))
    if (path / "FileList.csv").is_file():
        return _video_input(video_entries(path, split)[:limit])
    if path.is_dir():
        return _image_input(build_source("folder", src, split, limit, **options))
    raise FileNotFoundError(f"{src}: neither a dataset name ({', '.join(DATASETS.names())}) nor an image folder or CSV")


def _image_input(source: Any) -> ShardInput:
    return ShardInput(
        "image", len(source), lambda i: _image_members(source, i), lambda i: str(_file_of(source, i) or f"item {i}"),
        tuple(getattr(source, "classes", ())), bool(getattr(source, "has_masks", False)),
    )


def _video_input(entries: list[VideoEntry]) -> ShardInput:
    if not entries:
        raise FileNotFoundError("no videos to shard")
    return ShardInput(
        "video", len(entries), lambda i: _video_members(entries[i]), lambda i: str(entries[i].path),
        has_masks=any(entry.masks is not None for entry in entries),
    )


def _write_tar(path: Path, samples: list[dict[str, Any]]) -> str:
    """Write one shard atomically; returns the SHA-256 of its bytes."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle, wds.TarWriter(handle, encoder=False, mtime=0) as writer:
        for sample in samples:
            writer.write(sample)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    tmp.replace(path)
    return digest


def write_shards(source: ShardInput, out: str | Path, shard_size: int, progress: bool = False) -> dict[str, Any]:
    """Write `source` as tar shards of `shard_size` samples plus `shards.json` into `out`; returns the
    manifest. Unreadable items are skipped with a warning and listed in the manifest."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards, skipped, pending = [], [], []

    def flush() -> None:
        name = f"shard-{len(shards):06d}.tar"
        shards.append({"name": name, "count": len(pending), "sha256": _write_tar(out / name, pending)})
        pending.clear()

    for index in tqdm(range(source.count), desc=f"shards {out.name}", disable=not progress, leave=False):
        try:
            members = source.members(index)
        except CORRUPT as error:
            skipped.append(source.name(index))
            warnings.warn(f"skipping unreadable {source.name(index)}: {str(error).strip()[:200]}", stacklevel=2)
            continue
        pending.append({"__key__": f"{index:09d}", **members})
        if len(pending) == shard_size:
            flush()
    if pending:
        flush()
    if not shards:
        raise ValueError(f"nothing to shard: all {source.count} items were unreadable")
    manifest = {
        "format": FORMAT,
        "kind": source.kind,
        "classes": list(source.classes),
        "has_masks": source.has_masks,
        "count": sum(shard["count"] for shard in shards),
        "skipped": skipped,
        "shards": shards,
    }
    tmp = out / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / MANIFEST)
    names = {shard["name"] for shard in shards}
    for stale in out.glob("shard-*.tar"):  # left by an earlier, larger write
        if stale.name not in names:
            stale.unlink()
    return manifest


# -- reading -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """Samples first..last-1 of the shard at `url`; `offset` is the manifest index of its sample 0."""

    url: str
    first: int
    last: int
    offset: int

    @property
    def size(self) -> int:
        return self.last - self.first


def _members(span: Span) -> Iterator[dict[str, Any]]:
    """The span's samples as member dicts with '__index__' (manifest index). A shard that cannot be opened
    or ends early yields '__error__' markers for its missing samples, so positions stay aligned."""
    errors: list[Exception] = []

    def stop(error: Exception) -> bool:
        errors.append(error)
        return False

    position = span.first
    for sample in islice(wds.tarfile_samples([{"url": span.url}], handler=stop), span.first, span.last):
        yield {**sample, "__index__": span.offset + position}
        position += 1
    reason = str(errors[0]).strip()[:200] if errors else f"the shard ends after {position} of {span.last} samples"
    for missing in range(position, span.last):
        yield {"__url__": span.url, "__key__": f"#{missing}", "__index__": span.offset + missing, "__error__": reason}


def _resolve(root: str, split: str, shard_url: str | None) -> tuple[dict[str, Any], Callable[[str], str]]:
    """The manifest and a shard name -> URL function for a folder, a manifest path or a manifest URL (or
    `pipe:` command): a shard's name replaces the manifest's file name, or fills `{name}` in `shard_url`."""
    root = root.replace("{split}", split)
    if Path(root).is_dir():
        folder = Path(root) / split if (Path(root) / split / MANIFEST).is_file() else Path(root)
        if not (folder / MANIFEST).is_file():
            raise FileNotFoundError(
                f"data.root: no {MANIFEST} in {Path(root) / split} or {root} (write shards with `ssl-distill data shard`)"
            )
        manifest_url, base = str(folder / MANIFEST), str(folder) + os.sep
    elif root.endswith(".json"):
        manifest_url, base = root, root[: root.rfind("/") + 1]
    else:
        raise FileNotFoundError(f"data.root: {root} is neither a folder with {MANIFEST} nor a manifest (.json)")
    try:
        with wds.gopen(manifest_url) as handle:
            manifest = json.loads(handle.read())
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"data.root: cannot read the shard manifest {manifest_url}: {error}") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_url}: not a shard manifest of format {FORMAT} (has {manifest.get('format')!r})")
    name_to_url = (lambda name: shard_url.replace("{name}", name)) if shard_url else (lambda name: base + name)
    return manifest, name_to_url


class ShardSource(IterableDataset):
    """The samples of a shard set in manifest order, from `start` to `stop`: `Sample`s of an image set, or
    clip dicts {'video', 'label', 'ef', 'index'[, 'frame_masks']} of a video set (clip settings as in
    `ClipSampler`; the clip of sample i is seeded with i). DataLoader workers take turns by `block` samples
    (`for_loader`), so the loader yields the manifest order. Training reads it through `stream`."""

    def __init__(
        self,
        manifest: dict[str, Any],
        urls: list[str],
        clips: ClipSampler | None = None,
        with_masks: bool = False,
        shuffle_buffer: int | None = None,
    ) -> None:
        self.kind, self.classes = manifest["kind"], tuple(manifest["classes"])
        self.has_masks = bool(manifest["has_masks"]) if self.kind == "image" else with_masks
        self.counts = [int(shard["count"]) for shard in manifest["shards"]]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(int).tolist()
        self.urls, self.clips, self.with_masks = urls, clips, with_masks
        self.shuffle_buffer = SHUFFLE_BUFFER[self.kind] if shuffle_buffer is None else shuffle_buffer
        self.start, self.stop, self.block = 0, self.offsets[-1], 1
        # what the samples depend on, for feature caches: shard names, counts and content hashes
        self.fingerprint = hashlib.sha256(json.dumps(manifest["shards"], sort_keys=True).encode()).hexdigest()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.stop - self.start

    def subset(self, start: int, stop: int) -> ShardSource:
        """Samples start..stop-1 of this source (indices relative to it)."""
        if not 0 <= start <= stop <= len(self):
            raise ValueError(f"subset {start}..{stop} outside 0..{len(self)}")
        part = copy.copy(self)
        part.start, part.stop = self.start + start, self.start + stop
        return part

    def for_loader(self, block: int) -> ShardSource:
        """This source with DataLoader workers taking turns by `block` samples (one batch each)."""
        part = copy.copy(self)
        part.block = block
        return part

    def spans(self) -> list[Span]:
        """The parts of the shards that hold samples start..stop-1."""
        spans = []
        for url, count, offset in zip(self.urls, self.counts, self.offsets):
            first, last = max(self.start - offset, 0), min(self.stop - offset, count)
            if first < last:
                spans.append(Span(url, first, last, offset))
        return spans

    def item(self, raw: dict[str, Any], seed: int, transform: Callable | None = None) -> Any:
        """A raw member dict -> a Sample (a view item with `transform`) or a clip dict; CorruptMember when it
        cannot be decoded."""
        index = raw["__index__"]
        if "__error__" in raw:
            raise CorruptMember(f"skipping missing shard member {raw['__url__']} {raw['__key__']}: {raw['__error__']}")
        if self.kind == "image":
            sample = self._decoded(raw, self._image)
            return sample if transform is None else seeded_call(seed, lambda: view_item(sample, transform, index))
        return seeded_call(seed, lambda: {"index": index, **self._decoded(raw, self._video)})

    @staticmethod
    def _decoded(raw: dict[str, Any], decode: Callable[[dict[str, Any]], Any]) -> Any:
        try:
            return decode(raw)
        except CORRUPT as error:
            raise CorruptMember(
                f"skipping corrupt shard member {raw['__url__']} {raw['__key__']}: {str(error).strip()[:200]}"
            ) from None

    def _image(self, raw: dict[str, Any]) -> Sample:
        ext = next((ext for ext in IMAGE_EXTS if ext in raw), None)
        if ext is None:
            raise KeyError(f"no image member among {sorted(k for k in raw if not k.startswith('__'))}")
        with Image.open(io.BytesIO(raw[ext])) as image:
            rgb = image.convert("RGB")
        mask = None
        if self.has_masks:
            with Image.open(io.BytesIO(raw["mask.png"])) as image:
                mask = np.array(image)
        caption = raw["txt"].decode() if "txt" in raw else None
        return Sample(rgb, int(raw["cls"]), mask, caption=caption)

    def _video(self, raw: dict[str, Any]) -> dict[str, Any]:
        ext = next((ext for ext in VIDEO_EXTS if ext in raw), None)
        if ext is None:
            raise KeyError(f"no video member among {sorted(k for k in raw if not k.startswith('__'))}")
        masks = np.load(io.BytesIO(raw["masks.npy"])) if self.with_masks else None
        frames, masks = self.clips.read_clips(VideoFile(raw[ext]), masks, f"{raw['__key__']}.masks.npy")
        ef = json.loads(raw.get("json", b"{}")).get("ef")
        return {"label": int(raw.get("cls", b"-1")), "ef": math.nan if ef is None else float(ef), **self.clips.to_tensors(frames, masks)}

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for raw in chain.from_iterable(_members(span) for span in self.spans()):
            if (raw["__index__"] - self.start) // self.block % workers != worker:
                continue
            try:
                yield self.item(raw, raw["__index__"])
            except CorruptMember as error:
                warnings.warn(str(error), stacklevel=2)

    def stream(
        self, transform: Callable | None, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0
    ) -> ShardStream:
        return ShardStream(self, transform, batch_size, seed, rank, world_size, num_workers)


def deal(spans: list[Span], slots: int) -> list[list[Span]]:
    """Spans to `slots` lists of near-equal sample counts (largest first onto the least loaded slot)."""
    loads = [(0, slot) for slot in range(slots)]
    dealt: list[list[Span]] = [[] for _ in range(slots)]
    for span in sorted(spans, key=lambda s: (-s.size, s.offset)):
        load, slot = heapq.heappop(loads)
        dealt[slot].append(span)
        heapq.heappush(loads, (load + span.size, slot))
    return dealt


def _groups(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while group := list(islice(iterator, size)):
        yield group


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0]) % 2**31


class ShardStream(IterableDataset):
    """Training batches from a `ShardSource` for one rank: each DataLoader worker reads its own shards (see
    the module docstring for the order and the resume guarantee). Batches are collated dicts (image:
    'views', 'label', 'index'[, 'mask']; video: 'video', 'label', 'ef', 'index'[, 'frame_masks']) plus
    'skipped' (B,): corrupt members left out of the batch, counted on its first item. Acts as its own
    sampler: `batches_per_epoch`, `set_epoch(epoch, start_batch)`."""

    def __init__(
        self, source: ShardSource, transform: Callable | None, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0
    ) -> None:
        self.source, self.transform, self.batch_size, self.seed = source, transform, batch_size, seed
        self.rank, self.workers = rank, max(num_workers, 1)
        slots = world_size * self.workers
        spans = source.spans()
        if len(spans) < slots:
            raise ValueError(
                f"data: {len(spans)} shards cannot feed {world_size} rank(s) x {self.workers} worker(s): "
                "write more, smaller shards (--shard-size) or use fewer workers"
            )
        self.slots = deal(spans, slots)
        sizes = [sum(span.size for span in slot) for slot in self.slots]
        self.groups = min(sizes) // batch_size
        if self.groups == 0:
            raise ValueError(f"data: a reader slot holds {min(sizes)} samples, fewer than one batch of {batch_size}")
        self.unused = len(source) - slots * self.groups * batch_size  # left out of every epoch
        if self.unused > 0.05 * len(source):
            warnings.warn(
                f"shards: {self.unused} of {len(source)} samples are left out of every epoch ({slots} reader slots "
                f"of {min(sizes)} to {max(sizes)} samples, {self.groups} batches of {batch_size} each): write "
                "smaller shards (--shard-size) or use fewer workers", stacklevel=2
            )
        self.epoch = self.start_batch = 0

    @property
    def provides(self) -> frozenset[str]:
        if self.source.kind == "image":
            keys = {"views", "label", "index", "skipped"} | ({"mask"} if self.source.has_masks else set())
        else:
            keys = {"video", "label", "ef", "index", "skipped"} | ({"frame_masks"} if self.source.with_masks else set())
        return frozenset(keys)

    @property
    def batches_per_epoch(self) -> int:
        return self.workers * self.groups

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _slot_stream(self, slot: int) -> Iterator[dict[str, Any]]:
        rng = random.Random(f"{self.seed}:{self.epoch}:{slot}")
        spans = list(self.slots[slot])
        rng.shuffle(spans)
        raw = chain.from_iterable(_members(span) for span in spans)
        buffer = self.source.shuffle_buffer
        return wds.filters.shuffle(buffer, buffer, rng=rng)(raw) if buffer > 1 else raw

    def _batch(self, group: list[dict[str, Any]]) -> dict[str, Any]:
        items, bad = [], 0
        for raw in group:
            try:
                items.append(self.source.item(raw, sample_seed(self.seed, self.epoch, raw["__index__"]), self.transform))
            except CorruptMember as error:
                bad += 1
                warnings.warn(str(error), stacklevel=2)
        if not items:
            raise RuntimeError(f"all {len(group)} members of a batch are corrupt or missing (see the warnings)")
        batch = default_collate(items)
        batch["skipped"] = torch.zeros(len(items), dtype=torch.long)
        batch["skipped"][0] = bad
        return batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if workers != self.workers:
            raise RuntimeError(f"this stream was dealt to {self.workers} DataLoader workers, read with {workers}")
        # batch i of an epoch comes from role i % workers; resumed at start_batch, the loader asks worker 0
        # first, so worker w takes the role whose batch was next, and skips the batches that role yielded
        role = (worker + self.start_batch) % workers
        done = len(range(role, self.start_batch, workers))
        groups = _groups(self._slot_stream(self.rank * workers + role), self.batch_size)
        for group in islice(groups, done, self.groups):
            yield self._batch(group)


@dataclass
class ShardOptions:
    """`data.options` of `shards`. The clip settings apply to video shards (None: `ClipSampler`'s default)."""

    shard_url: str | None = None  # "...{name}...": where the shards named in the manifest are
    shuffle_buffer: int | None = ranged(None, "[0, inf)")  # samples per reader; None: 1000 images or 64 videos
    with_masks: bool = False
    num_frames: int | None = ranged(None, "[1, inf)")
    stride: int | None = ranged(None, "[1, inf)")
    clip_sampling: str | None = choice(None, ("random", "uniform"))
    clips_per_video: int | None = ranged(None, "[1, inf)")
    img_size: int | None = ranged(None, "[1, inf)")
    crop_scale: list[float] | None = ranged(None, "(0, 1]")
    crop_ratio: list[float] | None = ranged(None, "(0, inf)")
    hflip: float | None = ranged(None, "[0, 1]")
    mean: list[float] | None = None
    std: list[float] | None = ranged(None, "(0, inf)")


@DATASETS.register("shards", config=ShardOptions)
def shards(
    root: str | None = None,
    split: str = "train",
    limit: int | None = None,
    shard_url: str | None = None,
    shuffle_buffer: int | None = None,
    with_masks: bool = False,
    **clip: Any,
) -> ShardSource:
    """Shards written by `ssl-distill data shard`: `root` is their folder (or a folder of `<split>/`
    folders), a manifest path or URL; `shard_url` ("...{name}...") locates the shards by name when the
    manifest came from elsewhere. `shuffle_buffer` samples per reader (default 1000 images or 64 videos;
    0 or 1: none). Video sets take the `ClipSampler` settings and `with_masks`."""
    clip = {key: value for key, value in clip.items() if value is not None}
    if root is None:
        raise ValueError("data.root is required for the 'shards' dataset (a folder written by `ssl-distill data shard`)")
    manifest, url_of = _resolve(str(root), split, shard_url)
    urls = [url_of(shard["name"]) for shard in manifest["shards"]]
    if manifest["kind"] == "image":
        # the clip shape and normalisation the eval store derives from a backbone do not concern images (the
        # view transform or the eval adapter sizes and normalises them); the sampling settings are refused
        clip = {key: value for key, value in clip.items() if key not in ("num_frames", "img_size", "mean", "std")}
        if clip or with_masks:
            raise ValueError(f"data.options {sorted(clip) + (['with_masks'] if with_masks else [])} apply to video shards; {root} holds images")
    if with_masks and not manifest["has_masks"]:
        raise FileNotFoundError(f"with_masks: the shards in {root} hold no masks")
    clips = ClipSampler(**clip) if manifest["kind"] == "video" else None
    source = ShardSource(manifest, urls, clips, with_masks, shuffle_buffer)
    return source if limit is None or limit >= len(source) else source.subset(0, limit)
