"""Synthetic echocardiography: seeded beating-heart ultrasound clips in the EchoNet-Dynamic layout.

    out_dir/Videos/<FileName>.mp4   H.264 (yuv420p), grey replicated to RGB, a keyframe every 0.5 s
    out_dir/Masks/<FileName>.npy    uint8 (T, H, W): LV cavity 0/1, or for `camus` a label map
                                    (0 background, 1 LV cavity, 2 LV myocardium, 3 left atrium)
    out_dir/FileList.csv            EchoNet columns + `Label` (Normal/Abnormal) + `Anomaly`
    out_dir/latents.json            the drawn parameters of every video

The EF is measured, not asserted: LV volumes come from the drawn cavity masks by the single-plane
area-length rule at ED (max-area frame) and ES (min-area frame); a bisection on the contraction
amplitude brings that measured EF to the drawn target. The anatomy is laid out on a 112-px canvas
(sector apex at (56, 4), y down) and rendered at any size.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

CANVAS = 112.0
CM_PER_CANVAS_PX = 0.14  # a 15.7 cm deep sector, so volumes come out in adult-like mL
APEX = (56.0, 4.0)
SECTOR_RADIUS = 104.0
ANOMALIES = ("reduced_ef", "wall_motion", "arrhythmia", "dilated")
EF_TARGETS = {
    "none": (55.0, 70.0),
    "reduced_ef": (15.0, 40.0),
    "wall_motion": (35.0, 55.0),
    "arrhythmia": (50.0, 65.0),
    "dilated": (20.0, 45.0),
}
FILELIST_COLUMNS = (
    "FileName",
    "EF",
    "ESV",
    "EDV",
    "FrameHeight",
    "FrameWidth",
    "FPS",
    "NumberOfFrames",
    "Split",
)
EXTRA_COLUMNS = ("Label", "Anomaly")
# decord 0.6.0 returns frames of these widths with a wrong row stride and cannot decode them.
DECORD_BAD_WIDTHS = frozenset({12, 16, 24, 48, 72})
KEYFRAME_SECONDS = 0.5  # clinical exports put a keyframe every 0.5-1 s; reading a clip decodes from one
SYNTHETIC_VERSION = 2  # of the files written here; bumped whenever they change (names the cache folder)


@dataclass(frozen=True)
class Preset:
    views: tuple[str, ...]
    heart_rate: tuple[float, float]  # bpm
    heart_scale: float
    frames: tuple[int, int]  # NumberOfFrames range when `frames` is not given
    label_maps: bool
    folds: bool  # Split holds fold ids 0-9 (EchoNet-Pediatric) instead of TRAIN/VAL/TEST


PRESETS = {
    "adult": Preset(("A4C",), (55.0, 100.0), 1.0, (90, 220), label_maps=False, folds=False),
    "pediatric": Preset(("PSAX",), (80.0, 140.0), 0.7, (90, 220), label_maps=False, folds=True),
    "camus": Preset(("A4C", "A2C"), (55.0, 100.0), 1.0, (60, 120), label_maps=True, folds=False),
}

# Chambers on the canvas: centre (x, y), semi-axes (long, short), tilt of the long axis from vertical (deg).
LV_LAYOUT = {
    "A4C": ((62.0, 46.0), (28.0, 14.0), 10.0),
    "A2C": ((60.0, 46.0), (28.0, 14.5), 6.0),
    "PSAX": ((58.0, 56.0), (17.0, 17.0), 0.0),
}
OTHER_CHAMBERS = {
    "A4C": {
        "rv": ((31.0, 50.0), (21.0, 8.5), -5.0),
        "la": ((66.0, 89.0), (12.0, 11.0), 0.0),
        "ra": ((38.0, 89.0), (12.0, 10.0), 0.0),
    },
    "A2C": {"la": ((63.0, 89.0), (12.0, 12.0), 0.0)},
    "PSAX": {"rv": ((33.0, 52.0), (16.0, 8.0), 20.0)},
}
HEART_CENTER = (56.0, 60.0)


@dataclass
class Heart:
    """Latent parameters of one video (canvas units, angles in degrees)."""

    file_name: str
    view: str
    anomaly: str
    frames: int
    heart_rate: float
    beats: list[float]  # beat start times in frames; the last entry ends the last beat
    ef_target: float
    lv_axes: tuple[float, float]  # ED semi-axes (long, short)
    wall: float  # ED myocardial thickness
    long_axis_ratio: float  # long-axis shortening relative to short-axis shortening
    segment_angle: float  # centre of the abnormal wall segment (wall_motion only)
    segment_bulge: float  # 0 akinetic, > 0 dyskinetic (outward systolic motion)
    rotation: float
    scale: float
    shift: tuple[float, float]
    sector_half_angle: float
    attenuation: float
    gain: float
    noise: float
    tissue: float
    myocardium: float
    contraction: float = 0.0  # solved: fractional short-axis shortening at full contraction


def contraction_profile(phase: np.ndarray) -> np.ndarray:
    """Cavity contraction c in [0, 1] over the cardiac phase (0 = ED): raised-cosine systole up to
    ES at 0.35, exponential early filling, then the atrial kick back to 0."""
    systole = 0.5 - 0.5 * np.cos(np.pi * phase / 0.35)
    filling = 0.15 + 0.85 * np.exp(-(phase - 0.35) / 0.07)
    kick = 0.075 * (1.0 + np.cos(np.pi * (phase - 0.8) / 0.2))
    return np.where(phase < 0.35, systole, np.where(phase < 0.8, filling, kick))


def lv_volume(mask: np.ndarray, cm_per_px: float) -> float:
    """Single-plane area-length volume (mL) of a 2-D cavity mask: V = 8 A^2 / (3 pi L), with L the
    extent of the mask along its principal axis."""
    ys, xs = np.nonzero(mask)
    if len(ys) < 2:
        return 0.0
    points = np.stack([xs, ys], axis=1).astype(np.float64)
    points -= points.mean(0)
    axis = np.linalg.eigh(points.T @ points)[1][:, -1]
    projection = points @ axis
    length = (projection.max() - projection.min() + 1.0) * cm_per_px
    area = len(ys) * cm_per_px**2
    return float(8.0 * area**2 / (3.0 * np.pi * length))


def measure_ef(cavity: np.ndarray, cm_per_px: float) -> dict[str, float | int]:
    """EF (%), EDV and ESV (mL) of cavity masks (T, H, W): ED is the max-area frame, ES the min-area one."""
    areas = cavity.reshape(len(cavity), -1).sum(1)
    ed, es = int(areas.argmax()), int(areas.argmin())
    edv, esv = lv_volume(cavity[ed], cm_per_px), lv_volume(cavity[es], cm_per_px)
    ef = 100.0 * (edv - esv) / edv if edv > 0 else float("nan")
    return {"EF": ef, "EDV": edv, "ESV": esv, "ED": ed, "ES": es}


def _rotate(x: np.ndarray, y: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return c * x - s * y, s * x + c * y


def _ellipse_frame(
    x: np.ndarray, y: np.ndarray, center: tuple[float, float], tilt: float
) -> tuple[np.ndarray, np.ndarray]:
    """Canvas coordinates -> (u along the long axis, positive towards the base; v across it)."""
    s, c = np.sin(np.radians(tilt)), np.cos(np.radians(tilt))
    dx, dy = x - center[0], y - center[1]
    return s * dx + c * dy, c * dx - s * dy


def _draw_heart(
    rng: np.random.Generator,
    preset: Preset,
    view: str,
    anomaly: str,
    name: str,
    frames: int | None,
    fps: float,
) -> Heart:
    heart_rate = rng.uniform(*preset.heart_rate)
    period = 60.0 * fps / heart_rate
    frames = frames or max(
        int(rng.integers(preset.frames[0], preset.frames[1] + 1)), int(np.ceil(2 * period)) + 1
    )
    variation = rng.uniform(0.2, 0.3) if anomaly == "arrhythmia" else 0.02
    intervals = period * np.clip(
        1.0 + variation * rng.standard_normal(int(frames / (0.5 * period)) + 3), 0.5, 1.6
    )
    # start in late diastole, so that even a clip shorter than a beat holds one ED and one ES
    beats = np.cumsum(np.concatenate([[-rng.uniform(0.8, 0.95) * intervals[0]], intervals]))
    long_axis, short_axis = LV_LAYOUT[view][1]
    if anomaly == "dilated":
        long_axis, short_axis = long_axis * 1.1, short_axis * 1.3
    return Heart(
        file_name=name,
        view=view,
        anomaly=anomaly,
        frames=frames,
        heart_rate=float(heart_rate),
        beats=[float(b) for b in beats],
        ef_target=float(rng.uniform(*EF_TARGETS[anomaly])),
        lv_axes=(float(long_axis), float(short_axis)),
        wall=float(rng.uniform(4.5, 6.0)),
        long_axis_ratio=1.0 if view == "PSAX" else 0.4,
        segment_angle=float(rng.uniform(90.0, 270.0)),
        segment_bulge=float(rng.choice([0.0, rng.uniform(0.05, 0.15)])),
        rotation=float(rng.uniform(-5.0, 5.0)),
        scale=float(preset.heart_scale * rng.uniform(0.9, 1.1)),
        shift=(float(rng.uniform(-3.0, 3.0)), float(rng.uniform(-3.0, 3.0))),
        sector_half_angle=float(rng.uniform(35.0, 40.0)),
        attenuation=float(rng.uniform(0.3, 0.9)),
        gain=float(rng.uniform(0.9, 1.3)),
        noise=float(rng.uniform(0.03, 0.06)),
        tissue=float(rng.uniform(0.22, 0.35)),
        myocardium=float(rng.uniform(0.7, 0.9)),
    )


def _contraction(heart: Heart) -> np.ndarray:
    """(T,) contraction c(t) from the beat schedule."""
    t = np.arange(heart.frames, dtype=np.float64)
    beats = np.asarray(heart.beats)
    k = np.searchsorted(beats, t, side="right") - 1
    return contraction_profile((t - beats[k]) / (beats[k + 1] - beats[k]))


class _Scene:
    """Pixel coordinates of one video's heart, fixed over time; the LV is drawn per frame."""

    def __init__(self, heart: Heart, size: int) -> None:
        self.heart = heart
        canvas = (np.arange(size, dtype=np.float32) + 0.5) * CANVAS / size
        self.x, self.y = np.meshgrid(canvas, canvas)
        hx, hy = _rotate(
            self.x - HEART_CENTER[0] - heart.shift[0],
            self.y - HEART_CENTER[1] - heart.shift[1],
            -heart.rotation,
        )
        self.hx, self.hy = hx / heart.scale + HEART_CENTER[0], hy / heart.scale + HEART_CENTER[1]
        center, _, tilt = LV_LAYOUT[heart.view]
        self.u, self.v = _ellipse_frame(self.hx, self.hy, center, tilt)
        a, b = heart.lv_axes
        angle = np.degrees(np.arctan2(self.v / b, self.u / a)) % 360.0
        distance = np.abs((angle - heart.segment_angle + 180.0) % 360.0 - 180.0)
        # a 60-degree segment with 15-degree shoulders
        self.segment = np.clip((45.0 - distance) / 15.0, 0.0, 1.0) if heart.anomaly == "wall_motion" else None

    def axes(self, c: np.ndarray, amplitude: float) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.heart.lv_axes
        return a * (1.0 - self.heart.long_axis_ratio * amplitude * c), b * (1.0 - amplitude * c)

    def level(self, c: np.ndarray, amplitude: float, grow: np.ndarray | float = 0.0) -> np.ndarray:
        """(T, H, W) normalised radius of the LV boundary grown by `grow` (T,): <= 1 inside."""
        a_t, b_t = self.axes(c, amplitude)
        grow = np.broadcast_to(np.asarray(grow, dtype=np.float64), c.shape)
        a_t, b_t = (a_t + grow)[:, None, None], (b_t + grow)[:, None, None]
        level = np.sqrt((self.u / a_t) ** 2 + (self.v / b_t) ** 2)
        if self.segment is None:
            return level
        a, b = self.heart.lv_axes
        grow_ed = grow[:, None, None]
        still = np.sqrt((self.u / (a + grow_ed)) ** 2 + (self.v / (b + grow_ed)) ** 2)
        still = still / (1.0 + self.heart.segment_bulge * c[:, None, None])
        return (1.0 - self.segment) * level + self.segment * still

    def chamber(self, name: str, c: np.ndarray) -> np.ndarray:
        """(T, H, W) blood pool of a non-LV chamber: atria fill in systole, the RV empties."""
        center, (a, b), tilt = OTHER_CHAMBERS[self.heart.view][name]
        u, v = _ellipse_frame(self.hx, self.hy, center, tilt)
        factor = (1.0 + 0.12 * c) if name in ("la", "ra") else (1.0 - 0.2 * c)
        factor = factor[:, None, None]
        return (u / (a * factor)) ** 2 + (v / (b * factor)) ** 2 <= 1.0


def _solve_amplitude(scene: _Scene, c: np.ndarray, cm_per_px: float) -> float:
    """Bisection on the contraction amplitude so that the EF measured on the masks hits the target."""
    frames = np.array([c.argmin(), c.argmax()])
    low, high = 0.0, 0.9
    for _ in range(30):
        amplitude = 0.5 * (low + high)
        ef = measure_ef(scene.level(c[frames], amplitude) <= 1.0, cm_per_px)["EF"]
        if abs(ef - scene.heart.ef_target) < 0.25:
            break
        low, high = (amplitude, high) if ef < scene.heart.ef_target else (low, amplitude)
    return amplitude


def _render(scene: _Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one video: uint8 frames (T, H, W), LV cavity masks (T, H, W) bool and labels (T, H, W)
    uint8 (0 background, 1 cavity, 2 myocardium, 3 left atrium). `heart.contraction` must be solved."""
    heart, size = scene.heart, scene.x.shape[0]
    c = _contraction(heart)
    amplitude = heart.contraction
    a_t, b_t = scene.axes(c, amplitude)
    wall = heart.wall * np.sqrt(heart.lv_axes[1] / b_t)  # the myocardium thickens in systole
    level = scene.level(c, amplitude)
    cavity = level <= 1.0
    myocardium = (scene.level(c, amplitude, wall) <= 1.0) & ~cavity
    if heart.view != "PSAX":
        myocardium &= scene.u < 0.85 * a_t[:, None, None]  # open at the mitral annulus
    chambers = {name: scene.chamber(name, c) for name in OTHER_CHAMBERS[heart.view]}
    labels = np.zeros(cavity.shape, dtype=np.uint8)
    if "la" in chambers:
        labels[chambers["la"]] = 3
    labels[myocardium] = 2
    labels[cavity] = 1

    texture = gaussian_filter(rng.standard_normal(scene.x.shape), size / 16.0)
    tissue = heart.tissue * np.clip(1.0 + 0.25 * texture / texture.std(), 0.3, 2.0)
    reflectivity = np.broadcast_to(tissue, cavity.shape).astype(np.float32)
    blood = cavity.copy()
    for pool in chambers.values():
        blood |= pool
    reflectivity = np.where(blood, 0.04, reflectivity)
    reflectivity = np.where(myocardium, heart.myocardium, reflectivity)
    if heart.view != "PSAX":
        valve = (np.abs(scene.u - a_t[:, None, None]) < 1.2) & (np.abs(scene.v) < 0.6 * b_t[:, None, None])
        reflectivity = np.where(valve, (0.25 + 0.5 * c)[:, None, None], reflectivity)

    image = reflectivity * _speckle(scene, c, amplitude, level, rng)
    depth = np.hypot(scene.x - APEX[0], scene.y - APEX[1])
    angle = np.degrees(np.arctan2(scene.x - APEX[0], scene.y - APEX[1]))
    sector = (depth <= SECTOR_RADIUS) & (np.abs(angle) <= heart.sector_half_angle)
    image = heart.gain * np.exp(-heart.attenuation * depth / SECTOR_RADIUS) * image
    image = gaussian_filter(image, (0.0, 0.6, 0.6)) + heart.noise * rng.standard_normal(image.shape)
    video = (np.clip(image, 0.0, 1.0) * sector * 255.0).round().astype(np.uint8)
    return video, cavity, labels


def _speckle(
    scene: _Scene, c: np.ndarray, amplitude: float, level: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(T, H, W) multiplicative speckle, mean ~1: one fixed field on the probe's polar grid (filtered
    along depth and across beams) sampled where each tissue point sat at ED, so it moves with the
    wall, blended with 20% fresh speckle per frame."""
    heart, (size, _) = scene.heart, scene.x.shape
    a, b = heart.lv_axes
    a_t, b_t = scene.axes(c, amplitude)
    near = np.exp(-np.maximum(level - 1.0, 0.0) / 0.5)  # the wall's pull fades away from the LV
    du = scene.u * (a / a_t - 1.0)[:, None, None] * near
    dv = scene.v * (b / b_t - 1.0)[:, None, None] * near
    # LV frame -> canvas: along the LV axes, then the heart's rotation and scale
    s, co = np.sin(np.radians(LV_LAYOUT[heart.view][2])), np.cos(np.radians(LV_LAYOUT[heart.view][2]))
    dx, dy = _rotate((s * du + co * dv) * heart.scale, (co * du - s * dv) * heart.scale, heart.rotation)
    x0, y0 = scene.x + dx, scene.y + dy
    depth = np.hypot(x0 - APEX[0], y0 - APEX[1]) / SECTOR_RADIUS * (size - 1)
    beam = (
        (np.degrees(np.arctan2(x0 - APEX[0], y0 - APEX[1])) / heart.sector_half_angle + 1.0)
        * 0.5
        * (size - 1)
    )
    fixed = gaussian_filter(rng.rayleigh(1.0, (size, size)), (0.7, 1.5))
    moving = map_coordinates(fixed / fixed.mean(), np.stack([depth, beam]), order=1, mode="mirror")
    fresh = gaussian_filter(rng.rayleigh(1.0, moving.shape), (0.0, 0.7, 1.5))
    return (0.8 * moving + 0.2 * fresh / fresh.mean()).astype(np.float32)


def write_video(path: Path, frames: np.ndarray, fps: float, keyframe_seconds: float = KEYFRAME_SECONDS) -> None:
    """Grey (T, H, W) or RGB (T, H, W, 3) uint8 frames -> H.264 yuv420p video (even H and W) with a
    keyframe every `keyframe_seconds` (at least every frame)."""
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(
            "libx264", rate=int(round(fps)), options={"crf": "12", "preset": "veryfast"}
        )
        stream.codec_context.gop_size = max(1, round(fps * keyframe_seconds))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(
                stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"))
            )
        container.mux(stream.encode())


def _plan(rng: np.random.Generator, n: int, abnormal_fraction: float) -> list[str]:
    """Anomaly per video: round(n * fraction) abnormal, cycling through the four kinds, shuffled."""
    abnormal = int(round(n * abnormal_fraction))
    kinds = [ANOMALIES[i % len(ANOMALIES)] for i in range(abnormal)] + ["none"] * (n - abnormal)
    return [kinds[i] for i in rng.permutation(n)]


def _splits(anomalies: list[str], folds: bool) -> list[str]:
    """Stratified by Normal/Abnormal: per group 1/8 TEST, 1/8 VAL, the rest TRAIN (the first of
    each group go to TEST and VAL, so tiny sets still have both labels there); or folds 9, 8, 0-7."""
    pattern = [str(f) for f in (9, 8, *range(8))] if folds else ["TEST", "VAL"] + ["TRAIN"] * 6
    counts = {False: 0, True: 0}
    splits = []
    for anomaly in anomalies:
        group = anomaly != "none"
        splits.append(pattern[counts[group] % len(pattern)])
        counts[group] += 1
    return splits


def write_synthetic_echo(
    out_dir: str | Path,
    n: int,
    preset: str = "adult",
    seed: int = 0,
    size: int = 112,
    frames: int | None = None,
    fps: int = 50,
    abnormal_fraction: float = 0.5,
) -> Path:
    """Write n synthetic echo videos with FileList.csv, masks and latents.json into out_dir; returns it.

    frames: NumberOfFrames of every video; None draws it per video from the preset's range (at
    least two beats). size: frame height and width, even, >= 32 and readable by decord.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown echo preset '{preset}'; known: {', '.join(PRESETS)}")
    if size < 32 or size % 2 or size in DECORD_BAD_WIDTHS:
        raise ValueError(
            f"size must be even and >= 32 (and not {sorted(DECORD_BAD_WIDTHS)}, which decord misreads), got {size}"
        )
    if frames is not None and frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    spec = PRESETS[preset]
    out = Path(out_dir)
    (out / "Videos").mkdir(parents=True, exist_ok=True)
    (out / "Masks").mkdir(exist_ok=True)
    cm_per_px = CM_PER_CANVAS_PX * CANVAS / size
    anomalies = _plan(np.random.default_rng(seed), n, abnormal_fraction)
    rows, latents = [], {}
    for i, (anomaly, split) in enumerate(zip(anomalies, _splits(anomalies, spec.folds))):
        rng = np.random.default_rng([seed, i])
        name = f"{preset}_s{seed}_{i:04d}"
        view = spec.views[i % len(spec.views)]
        heart = _draw_heart(rng, spec, view, anomaly, name, frames, fps)
        scene = _Scene(heart, size)
        heart.contraction = _solve_amplitude(scene, _contraction(heart), cm_per_px)
        video, cavity, labels = _render(scene, rng)
        measured = measure_ef(cavity, cm_per_px)
        write_video(out / "Videos" / f"{name}.mp4", video, fps)
        np.save(out / "Masks" / f"{name}.npy", labels if spec.label_maps else cavity.astype(np.uint8))
        rows.append(
            {
                "FileName": name,
                "EF": round(measured["EF"], 4),
                "ESV": round(measured["ESV"], 4),
                "EDV": round(measured["EDV"], 4),
                "FrameHeight": size,
                "FrameWidth": size,
                "FPS": fps,
                "NumberOfFrames": heart.frames,
                "Split": split,
                "Label": "Normal" if anomaly == "none" else "Abnormal",
                "Anomaly": anomaly,
            }
        )
        latents[name] = {**asdict(heart), "ED": measured["ED"], "ES": measured["ES"]}
    with open(out / "FileList.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*FILELIST_COLUMNS, *EXTRA_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    config = {"preset": preset, "seed": seed, "size": size, "fps": fps, "cm_per_px": cm_per_px}
    (out / "latents.json").write_text(json.dumps({"config": config, "videos": latents}, indent=1))
    return out
