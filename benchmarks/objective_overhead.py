"""Objective overhead and partial teachers (issue 14, items 1 and 2).

    python benchmarks/objective_overhead.py [--quick] [--pairs N] [--out DIR]

**1. Objective overhead.** For every objective registered in `ssl_distill.registry.OBJECTIVES` (a new
objective without a row in `CASES` stops the script), at its tiny config under configs/<name>/: the median
wall time of one training step exactly as the trainer runs it (`Trainer.train_step`: schedules, objective
forward with its masking, targets and loss, backward, gradient clipping where the config clips, fused
AdamW step, `after_step` with EMA and centre updates), divided by the median time of the *reference*: the
irreducible cost of that step. The reference calls the same modules of the same objective (same weights,
same batch, same visible tokens, mask drawn once beforehand) in a straight line:

- the trainable modules' forward (students, decoders, heads, adapters, projections, prototypes) and their
  backward, through a stand-in loss `sum(mean(output ** 2))` over their outputs;
- the frozen or EMA teachers' forward under no_grad, only up to the deepest block the method reads;
- the optimizer step (the trainer's fused AdamW over the same parameter groups; gradient clipping where
  the config clips, as the recipe does).

So the ratio charges to the objective its mask sampling, target construction (patchify, normalisation,
Sinkhorn, centring and sharpening), loss math, EMA and centre updates and any glue. What each reference
counts (`REFERENCES`, B = batch, K = visible tokens):

| objective | reference forward (teachers: no_grad) |
|---|---|
| mae, videomae | encoder on the visible tokens (+ final norm) -> pixel decoder |
| dmae | teacher encoder on the visible tokens to its deepest tap; student encoder (taps) -> decoder; adapters on the taps |
| dino | EMA teacher + head on the 2 global crops; student + head on the global crops and on the local crops |
| discovr | video teacher + head on the clip; image teacher (all tokens) + head on every frame; video student on 1 + V tube-masked views -> decoder -> prototypes, video head on V class tokens; image student on the masked frame views + head |
| mrdd stage 1 | consistency encoder on the masked views -> decoder input -> every view's decoder |
| mrdd stage 2 | frozen consistency encoder on the views; per view: specific encoder -> decoder on [s, c], the CLUB network on s (twice: learning and bound) |
| tips | student on the whole image (class tokens) + text tower on the caption streams; teacher on the whole image + heads (class token, masked patches); student + head on the local crops; student on the block-masked image + head on the masked patches |
| finetune | classifier on the (mixed) images |
| g2sd (generic) | teacher encoder on the visible tokens -> its decoder to block `teacher_decoder_blocks`; student encoder -> decoder trunk -> decoder head, encoder head on the latent (the released weight-0 branch) |
| g2sd (specific) | fine-tuned teacher classifier; student classifier (class and distillation heads) |
| hybrid | both teachers on the full image to their deepest used block; student on the kept tokens (step at mid-training: drop ratio at its maximum) -> final norm -> projections |
| cmd | EMA teacher + view and region heads on the global crops; student + both heads on the global and local crops |
| cotap | EMA teacher + head, projection, object filter on the 2 global crops and the partner crop; the same student modules; student + head on the local crops |

Every step runs at a fixed step index (mid-training of a 1000-step schedule) on one prepared batch, torch
pinned to one thread; objective step (A) and reference (B) alternate A B A B ..., medians over `--pairs`
pairs after warm-up. A row above `TARGET` gets a torch.profiler run of the step: the top ops by self CPU
time, and the top ops by self CPU time in excess of the reference's.

**2. Partial teachers.** DMAE and G2SD at their tiny configs with a deeper teacher (a 12-block, 128-d MAE
with an 8-block decoder, trained here for one step): the step with the stop-early teacher as implemented
(DMAE: the teacher stops after its tapped block, 9 of 12; G2SD: the teacher decoder stops after block 4 of
8) against the same step with the whole teacher (DMAE: all 12 blocks, final norm and the teacher decoder,
as the official `forward_encoder_customized` runs; G2SD: the whole decoder with its norm and pixel head,
which the official code does not run: it truncates too). The loss is checked equal (same mask) before timing.

Teachers and data: every teacher run is trained for a couple of steps inside `<out>/objective_overhead/`
(`TEACHERS`), as tests/conftest.py builds its fixtures; CoTAP's neighbour file there lists, for image i,
images i..i+5 (the ranking cost does not depend on which images are partners). `<out>/objective_overhead.json`
holds the command, the machine (load average at start and end), and every row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightly.models.utils import get_at_index
from omegaconf import DictConfig
from torch import Tensor, nn

from eval.results import format_table
from ssl_distill.config import load_config
from ssl_distill.data.neighbors import write_neighbors
from ssl_distill.engine import train
from ssl_distill.engine.trainer import Trainer, adamw
from ssl_distill.modules.masking import random_patch_mask, tube_mask, zero_patches
from ssl_distill.modules.teacher import DecoderTargets, FrozenMAETeacher, FrozenTeacher, load_part
from ssl_distill.registry import OBJECTIVES

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TARGET = 1.15
SCHEDULE_STEPS = 1000  # the schedule every measured trainer is built with
STEP = SCHEDULE_STEPS // 2  # the step index every measured step runs at (warm-ups over, Hybrid's drop ratio at its max)
QUIET = ["train.progress=false", "train.tensorboard=false", "train.log_every=1", "train.threads=1"]
IMAGE_LIMIT = ["data.limit=128", "data.val_limit=64"]

# -- teachers -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherRun:
    """A run trained for `steps` steps from `config` + `overrides` (which may name earlier runs as {name})."""

    config: str
    overrides: tuple[str, ...]
    steps: int = 2


TEACHERS: dict[str, TeacherRun] = {
    # MAE teacher of DMAE, G2SD generic (with its decoder) and Hybrid's MIM teacher: configs/mae/tiny_mnist.yaml
    "mae": TeacherRun("mae/tiny_mnist.yaml", ()),
    "finetuned": TeacherRun("finetune/tiny_mnist.yaml", ("objective.pretrained={mae}",)),  # G2SD specific teacher
    "supervised": TeacherRun("finetune/tiny_mnist_scratch.yaml", ()),  # Hybrid's supervised teacher
    "g2sd_generic": TeacherRun("g2sd/tiny_mnist_generic.yaml", ("objective.teacher.source={mae}",)),  # G2SD specific init
    "mrdd_stage1": TeacherRun("mrdd/tiny_edge_mnist.yaml", ()),
    "dino_scenes": TeacherRun("dino/tiny_mnist.yaml", ("data.name=shapes_scenes",)),  # CoTAP's init (its heads too)
    # the deep teacher of the partial-teacher rows: 12 blocks (tap at 3/4: block 8), decoder of 8 blocks (G2SD: stop at 4)
    "mae_deep": TeacherRun("mae/tiny_mnist.yaml", ("model.depth=12", "objective.decoder.depth=8"), steps=1),
}


def train_teachers(root: Path, names: list[str]) -> dict[str, Path]:
    """Train each named teacher run once under `root` (reused when its checkpoint exists); name -> run dir."""
    runs: dict[str, Path] = {}
    for name in TEACHERS:
        if name not in names and not any(f"{{{name}}}" in o for n in names for o in TEACHERS[n].overrides):
            continue
        spec = TEACHERS[name]
        run_dir = root / name
        if not (run_dir / "backbone.safetensors").is_file():
            overrides = [o.format(**{k: str(v) for k, v in runs.items()}) for o in spec.overrides]
            cfg = load_config(CONFIGS / spec.config, [
                *QUIET, *IMAGE_LIMIT, f"run.out_dir={root}", f"run.name={name}", f"train.max_steps={spec.steps}",
                "train.checkpoint_every=0", *overrides,
            ])
            train(cfg)
        runs[name] = run_dir
    return runs


def neighbour_file(root: Path, size: int, k: int = 6) -> Path:
    """A CoTAP neighbour file for `size` images: row i = i, i + 1, ..., i + k - 1 (mod size)."""
    rows = (np.arange(size)[:, None] + np.arange(k)[None, :]) % size
    return write_neighbors(root / f"nns_bench_shapes_scenes_train_None_{size}.npz", rows)


# -- references -----------------------------------------------------------------------------------------------

Inputs = dict[str, Any]


def masked_inputs(obj: nn.Module, batch: dict[str, Any]) -> Inputs:
    x = obj.inputs(batch)
    return {"x": x, "keep": obj.sample_mask(x)}


def mae_reference(obj: nn.Module, i: Inputs) -> list[Tensor]:
    encoded = obj.backbone.encode(i["x"], i["keep"])
    return [obj.decoder(encoded.tokens, i["keep"])]


def dmae_reference(obj: nn.Module, i: Inputs) -> list[Tensor]:
    with torch.no_grad():
        obj.teacher.backbone.encode(i["x"], i["keep"], taps=obj.teacher.taps, stop=obj.teacher.stop)
    encoded = obj.backbone.encode(i["x"], i["keep"], taps=obj.student_blocks)
    taps = [adapter(encoded.taps[s]) for s, adapter in zip(obj.student_blocks, obj.adapters)]
    return [obj.decoder(encoded.tokens, i["keep"]), *taps]


def g2sd_generic_reference(obj: nn.Module, i: Inputs) -> list[Tensor]:
    teacher = obj.teacher
    with torch.no_grad():
        tokens = teacher.backbone.encode(i["x"], i["keep"]).tokens
        teacher.decoder.hidden(tokens, i["keep"], teacher.decoder_blocks)
    latent = obj.backbone.encode(i["x"], i["keep"]).tokens
    return [obj.decoder_head(obj.decoder.hidden(latent, i["keep"])), obj.encoder_head(latent)]


def multicrop_inputs(obj: nn.Module, batch: dict[str, Any]) -> Inputs:
    views = batch["views"]
    return {"global": torch.cat(views[:2]), "local": torch.cat(views[2:]) if len(views) > 2 else None, "batch": batch}


def dino_reference(obj: nn.Module, i: Inputs) -> list[Tensor]:
    with torch.no_grad():
        obj.teacher_head(obj.teacher(i["global"]))
    outputs = [obj.student_head(obj.student(i["global"]))]
    if i["local"] is not None:
        outputs.append(obj.student_head(obj.student(i["local"])))
    return outputs


def cmd_reference(obj: nn.Module, i: Inputs) -> list[Tensor]:
    mean = obj.cfg.objective.view_token == "mean"

    def project(backbone: nn.Module, head: nn.Module, region_head: nn.Module, x: Tensor) -> list[Tensor]:
        pooled, tokens = backbone.features(x)
        return [head(tokens.mean(1) if mean else pooled), region_head(tokens.flatten(0, 1))]

    with torch.no_grad():
        project(obj.teacher, obj.teacher_head, obj.teacher_region_head, i["global"])
    outputs = project(obj.student, obj.student_head, obj.student_region_head, i["global"])
    if i["local"] is not None:
        outputs += project(obj.student, obj.student_head, obj.student_region_head, i["local"])
    return outputs


def cotap_inputs(obj: nn.Module, batch: dict[str, Any]) -> Inputs:
    views, partner = batch["views"], batch["partner_views"][0]
    return {**multicrop_inputs(obj, batch), "dense": torch.cat([*views[:2], partner]), "n": 2 * len(partner)}


def cotap_reference(obj: nn.Module, i: Inputs) -> list[Tensor]:
    def dense(backbone: nn.Module, head: nn.Module, projection: nn.Module, object_filter: nn.Module) -> list[Tensor]:
        cls, tokens = backbone.features(i["dense"])
        filtered, _ = object_filter(F.normalize(projection(tokens), dim=-1))
        return [head(cls[: i["n"]]), filtered]

    with torch.no_grad():
        dense(obj.teacher, obj.teacher_head, obj.teacher_projection, obj.teacher_filter)
    outputs = dense(obj.student, obj.student_head, obj.student_projection, obj.student_filter)
    if i["local"] is not None:
        outputs.append(obj.student_head(obj.student(i["local"])))
    return outputs


def tips_inputs(obj: nn.Module, batch: dict[str, Any]) -> Inputs:
    views = batch["views"]
    return {
        "image": views[0], "local": torch.cat(views[1:]) if len(views) > 1 else None,
        "text": batch["text"], "text_mask": batch["text_mask"], "patch_mask": obj.block_mask(len(views[0])),
    }


def tips_reference(obj: nn.Module, i: Inputs) -> list[Tensor]:
    streams, prefix, mask = obj.cfg.objective.num_cls_tokens, obj.student.num_prefix_tokens, i["patch_mask"]
    student = obj.student
    tokens = student.forward_features(i["image"])
    texts = obj.text_tower(i["text"][:, :streams].flatten(0, 1), i["text_mask"][:, :streams].flatten(0, 1))
    with torch.no_grad():
        teacher = obj.teacher.forward_features(i["image"])
        obj.teacher_head(teacher[:, 0])
        obj.teacher_ibot_head(teacher[:, prefix:][mask])
    outputs = [tokens[:, :streams], texts]
    if i["local"] is not None:
        outputs.append(obj.student_head(student(i["local"])))
    hidden = student.final_norm()(student.run_blocks(student.embed(i["image"], patch_mask=mask))[0])
    return [*outputs, obj.student_ibot_head(hidden[:, prefix:][mask])]


def classification_inputs(obj: nn.Module, batch: dict[str, Any]) -> Inputs:
    images, _ = obj.mixed(batch)
    return {"images": images}


def finetune_reference(obj: nn.Module, i: Inputs) -> list[Tensor]:
    return [obj.classifier(i["images"])]


def g2sd_specific_reference(obj: nn.Module, i: Inputs) -> list[Tensor]:
    obj.teacher(i["images"])  # FrozenPart: no_grad
    return list(obj.classifier(i["images"]))


def hybrid_inputs(obj: nn.Module, batch: dict[str, Any]) -> Inputs:
    images = batch["views"][0]
    with torch.no_grad():
        keep = obj.keep(images, obj.drop_ratio(STEP), obj.run_teachers(images))
    return {"images": images, "keep": keep}


def hybrid_reference(obj: nn.Module, i: Inputs) -> list[Tensor]:
    with torch.no_grad():
        for teacher in (obj.contrastive_teacher, obj.mim_teacher):
            teacher.backbone.encode(i["images"], taps=teacher.taps, stop=teacher.stop)
    encoded = obj.backbone.encode(i["images"], i["keep"], taps=obj.student_feature_blocks)
    norm = obj.backbone.final_norm()
    return [projection(norm(encoded.taps[s])) for s, projection in zip(obj.student_feature_blocks, obj.projections)]


def discovr_inputs(obj: nn.Module, batch: dict[str, Any]) -> Inputs:
    o, video = obj.cfg.objective, batch["video"]
    images = video.transpose(1, 2).flatten(0, 1).unsqueeze(2)
    grid, image_grid = obj.video_student.grid_size, obj.image_student.grid_size
    return {
        "video": video, "images": images,
        "masks": [tube_mask(len(video), grid, o.mask_ratio) for _ in range(1 + o.video_views)],
        "image_masks": [tube_mask(len(images), image_grid, o.image_mask_ratio) for _ in range(o.image_views)],
    }


def views_encoded(encoder: nn.Module, x: Tensor, masks: list[Tensor]) -> Tensor:
    """Embed once, every masked view through the blocks in one batch -> (V, B, 1 + K, D) final-norm tokens."""
    tokens = encoder.embed(x)
    hidden, _ = encoder.run_blocks(torch.cat([get_at_index(tokens, mask) for mask in masks]))
    return encoder.final_norm()(hidden).unflatten(0, (len(masks), len(x)))


def discovr_reference(obj: nn.Module, i: Inputs) -> list[Tensor]:
    with torch.no_grad():
        obj.video_teacher_head(obj.video_teacher(i["video"]))
        obj.image_teacher_head(obj.image_teacher.forward_features(i["images"])[:, 0])
    video = views_encoded(obj.video_student, i["video"], i["masks"])
    decoded = obj.decoder(video[0, :, 1:], i["masks"][0])
    images = views_encoded(obj.image_student, i["images"], i["image_masks"])
    return [obj.prototypes(decoded), obj.video_student_head(video[1:, :, 0]), obj.image_student_head(images[:, :, 0])]


def mrdd_inputs(obj: nn.Module, batch: dict[str, Any]) -> Inputs:
    o, views = obj.cfg.objective, list(batch["views"])
    patches = (views[0].shape[-1] // o.patch_size) ** 2
    masked = [zero_patches(x, random_patch_mask(len(x), patches, o.mask_ratio), o.patch_size) for x in views]
    return {"views": views, "masked": masked}


def mrdd_reference(obj: nn.Module, i: Inputs) -> list[Tensor]:
    if obj.stage == 1:
        mu, logvar = obj.backbone.consistency(i["masked"])
        z = obj.to_decoder_input(mu)
        return [logvar, *(decoder(z) for decoder in obj.decoders)]
    with torch.no_grad():
        c, _ = obj.backbone.consistency(i["views"])
    outputs = []
    for v, x in enumerate(i["views"]):
        mu, logvar = obj.backbone.specific[v]([x])
        recon = obj.decoders[v](obj.to_decoder_input[v](torch.cat([mu, c], dim=1)))
        outputs += [logvar, recon, *obj.club[v](mu.detach()), *obj.club[v](mu)]
    return outputs


@dataclass(frozen=True)
class Case:
    """One row: an objective at its tiny config, the teacher runs it names ({name} in overrides) and its reference."""

    row: str
    objective: str
    config: str
    prepare: Callable[[nn.Module, dict[str, Any]], Inputs]
    reference: Callable[[nn.Module, Inputs], list[Tensor]]
    overrides: tuple[str, ...] = ()
    image: bool = True  # an image dataset: limit its size
    in_quick: bool = True  # a row of --quick (the at-scale rows are not: seconds per step)
    describe: str = ""


# The tiny echo configs at ViT-S/16 size on 16 frames of 112 px with 2 x 16 x 16 tubelets (8 x 7 x 7 = 392
# tokens; the paper's ViT-B runs 64 frames): where the tiny rows' fixed per-step costs (target
# standardisation, masks, Sinkhorn, EMA) stop showing.
VIDEO_VIT_S = (
    "model.img_size=112", "model.patch_size=16", "model.embed_dim=384", "model.depth=12", "model.num_heads=6",
    "data.options.num_frames=16", "data.options.img_size=112", "objective.decoder.dim=192",
    "objective.decoder.depth=4", "objective.decoder.heads=3",
)

CASES: list[Case] = [
    Case("mae", "mae", "mae/tiny_mnist_student.yaml", masked_inputs, mae_reference,
         describe="encoder on visible tokens -> pixel decoder"),
    Case("videomae", "videomae", "videomae/tiny_echo.yaml", masked_inputs, mae_reference, image=False,
         describe="video encoder on visible tubelets -> pixel decoder"),
    Case("videomae (ViT-S, 16 x 112 px)", "videomae", "videomae/tiny_echo.yaml", masked_inputs, mae_reference,
         VIDEO_VIT_S, image=False, in_quick=False,
         describe="as above, at ViT-S width and depth on 16 frames of 112 px (392 tubelets)"),
    Case("dmae", "dmae", "dmae/tiny_mnist.yaml", masked_inputs, dmae_reference, ("objective.teacher.source={mae}",),
         describe="teacher to its tap (no_grad); student (taps) -> decoder; adapters"),
    Case("dino", "dino", "dino/tiny_mnist.yaml", multicrop_inputs, dino_reference,
         describe="EMA teacher + head on 2 global crops (no_grad); student + head on all crops"),
    Case("discovr", "discovr", "discovr/tiny_echo.yaml", discovr_inputs, discovr_reference, image=False,
         describe="video/image EMA teachers + heads (no_grad); video student on 1+V views -> decoder -> prototypes, "
                  "heads; image student on masked frames + head"),
    Case("discovr (ViT-S, 16 x 112 px)", "discovr", "discovr/tiny_echo.yaml", discovr_inputs, discovr_reference,
         (*VIDEO_VIT_S, "objective.num_prototypes=256"), image=False, in_quick=False,
         describe="as above, at ViT-S width and depth on 16 frames of 112 px (392 tubelets)"),
    Case("mrdd (stage 1)", "mrdd", "mrdd/tiny_edge_mnist.yaml", mrdd_inputs, mrdd_reference,
         describe="consistency encoder on masked views -> every view decoder"),
    Case("mrdd (stage 2)", "mrdd", "mrdd/tiny_edge_mnist_stage2.yaml", mrdd_inputs, mrdd_reference,
         ("objective.consistency={mrdd_stage1}",),
         describe="frozen consistency encoder (no_grad); per view specific encoder -> decoder, CLUB net x2"),
    Case("tips", "tips", "tips/tiny_shapes.yaml", tips_inputs, tips_reference,
         describe="student (whole image) + text tower; EMA teacher + heads (no_grad); student + head on local "
                  "crops; student on block-masked image + patch head"),
    Case("finetune", "finetune", "finetune/tiny_mnist.yaml", classification_inputs, finetune_reference,
         ("objective.pretrained={mae}",), describe="classifier on the mixed images"),
    Case("g2sd (generic)", "g2sd", "g2sd/tiny_mnist_generic.yaml", masked_inputs, g2sd_generic_reference,
         ("objective.teacher.source={mae}",),
         describe="teacher encoder -> decoder to block 1 of 2 (no_grad); student -> decoder trunk -> head; encoder head"),
    Case("g2sd (specific)", "g2sd", "g2sd/tiny_mnist_specific.yaml", classification_inputs, g2sd_specific_reference,
         ("objective.pretrained={g2sd_generic}", "objective.teacher.source={finetuned}"),
         describe="fine-tuned teacher classifier (no_grad); student classifier, two heads"),
    Case("hybrid", "hybrid", "hybrid/tiny_mnist.yaml", hybrid_inputs, hybrid_reference,
         ("objective.contrastive_teacher.source={supervised}", "objective.mim_teacher.source={mae}"),
         describe="both teachers on the full image (no_grad); student on kept tokens (50%) -> norm -> projection"),
    Case("cmd", "cmd", "cmd/tiny_shapes_fine.yaml", multicrop_inputs, cmd_reference,
         describe="EMA teacher + view/region heads on global crops (no_grad); student + heads on all crops"),
    Case("cotap", "cotap", "cotap/tiny_shapes_scenes.yaml", cotap_inputs, cotap_reference,
         ("objective.init={dino_scenes}", "data.options.file={nns}"),
         describe="EMA teacher + head/projection/filter on 3 dense crops (no_grad); same student modules; student + "
                  "head on local crops"),
]


def check_coverage() -> None:
    registered, covered = set(OBJECTIVES.names()), {case.objective for case in CASES}
    if registered - covered:
        raise RuntimeError(f"objectives without an overhead row in benchmarks/objective_overhead.py CASES: "
                           f"{sorted(registered - covered)}; add a Case with its reference")
    if covered - registered:
        raise RuntimeError(f"CASES name objectives that are not registered: {sorted(covered - registered)}")


# -- timing ---------------------------------------------------------------------------------------------------


def build_trainer(case_config: str, out: Path, overrides: list[str]) -> tuple[Trainer, dict[str, Any]]:
    """The trainer of `case_config` with a SCHEDULE_STEPS schedule, and one batch from its loader."""
    cfg: DictConfig = load_config(CONFIGS / case_config, [
        *QUIET, f"run.out_dir={out}", f"train.max_steps={SCHEDULE_STEPS}", "train.checkpoint_every=0", *overrides,
    ])
    trainer = Trainer(cfg)
    batches = trainer._batches()
    try:
        batch = next(batches)
    finally:
        batches.close()
    return trainer, batch


def objective_step(trainer: Trainer, batch: dict[str, Any]) -> None:
    trainer.step, trainer.unread = STEP, []
    trainer.train_step(batch)


def make_reference_step(trainer: Trainer, case: Case, batch: dict[str, Any]) -> Callable[[], None]:
    """The reference step of `case` on `batch`: its own AdamW over the objective's parameter groups."""
    obj, cfg = trainer.objective, trainer.cfg
    torch.manual_seed(1)
    obj.train()
    inputs = case.prepare(obj, batch)
    optimizer = adamw(obj.param_groups(cfg.optim.weight_decay), trainer.lr, tuple(cfg.optim.betas), trainer.device)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    clip = cfg.optim.clip_grad

    def step() -> None:
        obj.train()
        outputs = case.reference(obj, inputs)
        loss = sum(output.float().square().mean() for output in outputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()

    return step


def seconds(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(a: Callable[[], None], b: Callable[[], None], pairs: int, warmup: int) -> tuple[list[float], list[float]]:
    """Run a and b alternately (a b a b ...); their times in seconds after `warmup` untimed pairs."""
    for _ in range(warmup):
        a()
        b()
    times_a, times_b = [], []
    for _ in range(pairs):
        times_a.append(seconds(a))
        times_b.append(seconds(b))
    return times_a, times_b


def profile_ops(fn: Callable[[], None], steps: int) -> dict[str, tuple[float, int]]:
    """op name -> (self CPU ms per step, calls per step) over `steps` calls of fn."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    return {e.key: (e.self_cpu_time_total / 1000 / steps, round(e.count / steps)) for e in prof.key_averages()}


def top_ops(step: dict[str, tuple[float, int]], reference: dict[str, tuple[float, int]], n: int = 5) -> dict[str, list]:
    """The n ops with the most self CPU time in the step, and the n with the most time in excess of the reference."""

    def entry(name: str, ms: float) -> dict[str, Any]:
        ref_ms, ref_calls = reference.get(name, (0.0, 0))
        return {"op": name, "self_cpu_ms": round(ms, 3), "calls": step[name][1], "reference_ms": round(ref_ms, 3),
                "reference_calls": ref_calls}

    by_time = sorted(step, key=lambda k: step[k][0], reverse=True)[:n]
    excess = sorted(step, key=lambda k: step[k][0] - reference.get(k, (0.0, 0))[0], reverse=True)[:n]
    return {"top": [entry(k, step[k][0]) for k in by_time], "excess": [entry(k, step[k][0]) for k in excess]}


def measure_case(
    case: Case, out: Path, teachers: dict[str, Path], pairs: int, warmup: int, profile_steps: int, small: list[str]
) -> dict[str, Any]:
    names = {k: str(v) for k, v in teachers.items()}
    overrides = [o.format(**names) for o in case.overrides] + ([*IMAGE_LIMIT, *small] if case.image else [])
    trainer, batch = build_trainer(case.config, out / "runs", [f"run.name={case.row.replace(' ', '_')}", *overrides])
    reference = make_reference_step(trainer, case, batch)
    step = lambda: objective_step(trainer, batch)  # noqa: E731
    times_step, times_reference = interleaved(step, reference, pairs, warmup)
    step_ms, reference_ms = 1000 * statistics.median(times_step), 1000 * statistics.median(times_reference)
    ratio = step_ms / reference_ms
    row = {
        "objective": case.row, "config": f"configs/{case.config}", "step_ms": round(step_ms, 2),
        "reference_ms": round(reference_ms, 2), "ratio": round(ratio, 3),
        "pair_ratio_iqr": [round(float(q), 3) for q in np.percentile(np.array(times_step) / np.array(times_reference), [25, 75])],
        "pairs": pairs, "batch_size": int(trainer.cfg.data.batch_size), "reference": case.describe,
        "target_met": ratio <= TARGET,
    }
    if ratio > TARGET:
        row["profile_top_ops"] = top_ops(profile_ops(step, profile_steps), profile_ops(reference, profile_steps))
    return row


# -- partial teachers -----------------------------------------------------------------------------------------


class WholeDMAETeacher(FrozenTeacher):
    """DMAE's teacher as the official `forward_encoder_customized` runs it: every block, the final norm and
    the teacher's decoder, the taps kept (the same targets as the stop-early teacher)."""

    def __init__(self, early: FrozenTeacher, decoder: nn.Module) -> None:
        super().__init__(early.backbone, early.taps)
        self.decoder = decoder
        self.stop = early.backbone.depth

    @torch.no_grad()
    def forward(self, images: Tensor, idx_keep: Tensor | None = None) -> dict[int, Tensor]:
        encoded = self.backbone.encode(images, idx_keep=idx_keep, taps=self.taps)
        self.decoder(encoded.tokens, idx_keep)
        return {block: tokens.float() for block, tokens in encoded.taps.items()}


class WholeG2SDTeacher(FrozenMAETeacher):
    """G2SD's MAE teacher running its whole decoder (with norm and pixel head) and reading the state after
    `decoder_blocks` blocks: the work the truncation saves."""

    def __init__(self, early: FrozenMAETeacher) -> None:
        super().__init__(early.backbone, early.decoder, early.decoder_blocks)

    @torch.no_grad()
    def forward(self, images: Tensor, idx_keep: Tensor) -> DecoderTargets:
        last = self.backbone.depth - 1
        encoded = self.backbone.encode(images, idx_keep, taps=(last,))
        hidden = self.decoder.hidden(encoded.tokens, idx_keep, self.decoder_blocks)
        rest = self.decoder.decoder.blocks[self.decoder_blocks :](hidden)
        self.decoder.predict(self.decoder.decoder.norm(rest))
        return DecoderTargets(encoded.taps[last].float(), hidden.float())


def same_loss(obj: nn.Module, batch: dict[str, Any], early: nn.Module, whole: nn.Module) -> bool:
    losses = []
    for teacher in (early, whole):
        obj.teacher = teacher
        torch.manual_seed(7)
        losses.append(obj(batch, STEP).loss.detach())
    obj.teacher = early
    assert torch.allclose(losses[0], losses[1]), f"losses differ: {losses}"
    return bool(torch.equal(losses[0], losses[1]))


def measure_partial(name: str, out: Path, deep: Path, pairs: int, warmup: int, small: list[str]) -> dict[str, Any]:
    if name == "dmae":
        config, overrides = "dmae/tiny_mnist.yaml", [f"objective.teacher.source={deep}"]
    else:
        config, overrides = "g2sd/tiny_mnist_generic.yaml", [f"objective.teacher.source={deep}", "objective.teacher_decoder_blocks=4"]
    trainer, batch = build_trainer(config, out / "runs", [f"run.name=partial_{name}", *IMAGE_LIMIT, *small, *overrides])
    obj = trainer.objective
    early = obj.teacher
    whole = WholeDMAETeacher(early, load_part(deep, "decoder")) if name == "dmae" else WholeG2SDTeacher(early)
    identical = same_loss(obj, batch, early, whole)

    def step_with(teacher: nn.Module) -> Callable[[], None]:
        def run() -> None:
            obj.teacher = teacher
            objective_step(trainer, batch)
        return run

    images = obj.inputs(batch)
    keep = obj.sample_mask(images)
    steps_early, steps_whole = interleaved(step_with(early), step_with(whole), pairs, warmup)
    teacher_early, teacher_whole = interleaved(lambda: early(images, keep), lambda: whole(images, keep), pairs, warmup)
    obj.teacher = early
    med = lambda times: 1000 * statistics.median(times)  # noqa: E731
    depth, decoder_depth = early.backbone.depth, len(early.decoder.decoder.blocks) if name == "g2sd" else None
    what = (f"teacher blocks 1-{early.stop} of {depth} vs {depth} + norm + {len(whole.decoder.decoder.blocks)}-block decoder"
            if name == "dmae" else f"teacher decoder blocks 1-{early.decoder_blocks} of {decoder_depth} vs all + norm + head")
    return {
        "objective": name, "config": f"configs/{config}", "teacher": what,
        "step_ms_early": round(med(steps_early), 2), "step_ms_whole": round(med(steps_whole), 2),
        "step_speedup": round(med(steps_whole) / med(steps_early), 3),
        "teacher_ms_early": round(med(teacher_early), 2), "teacher_ms_whole": round(med(teacher_whole), 2),
        "teacher_speedup": round(med(teacher_whole) / med(teacher_early), 3),
        "loss_allclose": True, "loss_bitwise_equal": identical, "pairs": pairs,
    }


# -- main -----------------------------------------------------------------------------------------------------


def machine(load_start: tuple[float, ...]) -> dict[str, Any]:
    return {
        "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks"), help="writes <out>/objective_overhead.json")
    parser.add_argument("--quick", action="store_true", help="2 pairs, 1 warm-up, image batches of 16, no at-scale rows: a smoke check")
    parser.add_argument("--pairs", type=int, default=None, help="timed pairs per row (default 15; --quick 2)")
    parser.add_argument("--only", nargs="*", default=None, help="rows to run (default: all)")
    args = parser.parse_args(argv)
    check_coverage()
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    pairs = args.pairs or (2 if args.quick else 15)
    warmup, profile_steps = (1, 1) if args.quick else (3, 5)
    small = ["data.batch_size=16"] if args.quick else []  # image configs only (the echo ones have 4 clips)
    load_start = os.getloadavg()
    started = time.perf_counter()
    work = args.out / "objective_overhead"
    if args.only is None:
        cases = [c for c in CASES if c.in_quick or not args.quick]
    else:
        cases = [c for c in CASES if c.row in args.only or c.objective in args.only]
    needed = sorted({name for c in cases for o in c.overrides for name in TEACHERS if f"{{{name}}}" in o})
    teachers = train_teachers(work / "teachers", [*needed, "mae_deep"])
    teachers["nns"] = neighbour_file(work / "teachers", 128)

    rows = []
    for case in cases:
        tic = time.perf_counter()
        rows.append(measure_case(case, work, teachers, pairs, warmup, profile_steps, small))
        print(f"{case.row}: ratio {rows[-1]['ratio']:.3f} ({time.perf_counter() - tic:.0f} s)", flush=True)
    partial = [measure_partial(name, work, teachers["mae_deep"], pairs, warmup, small) for name in ("dmae", "g2sd")]

    result = {
        "command": shlex.join(["python", "benchmarks/objective_overhead.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(load_start),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "target": TARGET, "step_index": STEP, "schedule_steps": SCHEDULE_STEPS, "warmup_pairs": warmup,
        "rows": rows, "partial_teachers": partial,
    }
    columns = ["objective", "batch_size", "step_ms", "reference_ms", "ratio", "target_met"]
    print("\nObjective overhead (step / reference, medians of interleaved pairs, 1 thread)\n")
    print(format_table(rows, columns))
    for row in rows:
        if "profile_top_ops" in row:
            print(f"\n{row['objective']} (ratio {row['ratio']}): top ops by self CPU time in excess of the reference")
            print(format_table(row["profile_top_ops"]["excess"]))
    print("\nPartial teachers (stop-early vs whole teacher, same loss)\n")
    print(format_table(partial, ["objective", "teacher", "step_ms_early", "step_ms_whole", "step_speedup",
                                 "teacher_ms_early", "teacher_ms_whole", "teacher_speedup", "loss_bitwise_equal"]))
    m = result["machine"]
    print(f"\n{m['cpus']} CPUs, load average {m['load_average_start'][0]} -> {m['load_average_end'][0]}, "
          f"torch {m['torch']}, {m['threads']} thread; {result['seconds']:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "objective_overhead.json"
    path.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    print(f"wrote {path}")
    return result


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    main()
