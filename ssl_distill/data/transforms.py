"""View transforms, registered by name; each returns a list of view tensors (C, H, W).

`mae` and `multicrop` are lightly's MAETransform and DINOTransform; `eval` is a deterministic
resize + centre crop for feature extraction; `finetune` is timm's training transform (RandAugment,
random erasing) for supervised fine-tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torchvision.transforms as T
from lightly.transforms import DINOTransform, MAETransform
from PIL import Image, ImageOps
from timm.data import create_transform
from torch import Tensor

from ssl_distill.registry import TRANSFORMS
from ssl_distill.schema import ranged

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _normalize(mean: list[float], std: list[float]) -> dict[str, list[float]]:
    return {"mean": list(mean), "std": list(std)}


@dataclass
class MAEViewConfig:
    name: str = "mae"
    img_size: int = ranged(32, "[1, inf)")
    min_scale: float = ranged(0.2, "(0, 1]")
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class MultiCropConfig:
    name: str = "multicrop"
    global_crop_size: int = ranged(32, "[1, inf)")
    global_crop_scale: list[float] = ranged([0.4, 1.0], "(0, 1]")
    local_crop_size: int = ranged(16, "[1, inf)")
    local_crop_scale: list[float] = ranged([0.05, 0.4], "(0, 1]")
    n_local_views: int = ranged(6, "[0, inf)")
    cj_prob: float = ranged(0.8, "[0, 1]")
    random_gray_scale: float = ranged(0.2, "[0, 1]")
    solarization_prob: float = ranged(0.2, "[0, 1]")
    blur: bool = True
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class EvalViewConfig:
    name: str = "eval"
    img_size: int = ranged(32, "[1, inf)")
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class FineTuneViewConfig:
    """timm's training transform as MAE / DeiT fine-tuning use it (MAE `util/datasets.py`): random resized
    crop (bicubic), flip, RandAugment, random erasing with per-pixel noise, no colour jitter."""

    name: str = "finetune"
    img_size: int = 32
    min_scale: float = 0.08
    hflip: float = 0.5
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # timm's RandAugment spec; null switches it off
    re_prob: float = 0.25
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))


ViewTransform = Callable[[Image.Image], list[Tensor]]


def _mae(cfg: MAEViewConfig) -> ViewTransform:
    return MAETransform(input_size=cfg.img_size, min_scale=cfg.min_scale, normalize=_normalize(cfg.mean, cfg.std))


def _multicrop(cfg: MultiCropConfig) -> ViewTransform:
    return DINOTransform(
        global_crop_size=cfg.global_crop_size,
        global_crop_scale=tuple(cfg.global_crop_scale),
        local_crop_size=cfg.local_crop_size,
        local_crop_scale=tuple(cfg.local_crop_scale),
        n_local_views=cfg.n_local_views,
        cj_prob=cfg.cj_prob,
        random_gray_scale=cfg.random_gray_scale,
        solarization_prob=cfg.solarization_prob,
        gaussian_blur=(1.0, 0.1, 0.5) if cfg.blur else (0.0, 0.0, 0.0),
        normalize=_normalize(cfg.mean, cfg.std),
    )


def eval_transform(img_size: int = 32, mean: list[float] = IMAGENET_MEAN, std: list[float] = IMAGENET_STD) -> T.Compose:
    """Deterministic PIL -> (3, img_size, img_size) tensor for feature extraction."""
    return T.Compose(
        [
            T.Resize(img_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(img_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def _eval(cfg: EvalViewConfig) -> ViewTransform:
    single = eval_transform(cfg.img_size, cfg.mean, cfg.std)
    return lambda image: [single(image)]


def _posterize(image: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    """timm's posterize for any bit count: RandAugment's increasing posterize asks for 0 bits at magnitude 10,
    which Pillow >= 10 refuses and older Pillow turned into a black image (the mask keeps no bit)."""
    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits_to_keep)


def _finetune(cfg: FineTuneViewConfig) -> ViewTransform:
    single = create_transform(
        cfg.img_size, is_training=True, scale=(cfg.min_scale, 1.0), hflip=cfg.hflip, color_jitter=None,
        auto_augment=cfg.auto_augment, interpolation="bicubic", re_prob=cfg.re_prob, re_mode="pixel",
        re_count=1, mean=tuple(cfg.mean), std=tuple(cfg.std),
    )
    for step in single.transforms:
        for op in getattr(step, "ops", ()):
            if op.name.startswith("Posterize"):
                op.aug_fn = _posterize
    return lambda image: [single(image)]


for _name, _builder, _config in (
    ("mae", _mae, MAEViewConfig),
    ("multicrop", _multicrop, MultiCropConfig),
    ("eval", _eval, EvalViewConfig),
    ("finetune", _finetune, FineTuneViewConfig),
):
    TRANSFORMS.register(_name, config=_config)(_builder)


def build_transform(cfg) -> ViewTransform:  # cfg: a validated data.transform section
    return TRANSFORMS.get(cfg.name)(cfg)
