"""One page (Markdown + HTML, PNG figures) from run or results directories: a comparison table of every
result (trained backbones and baselines, with the samples behind each score and the command that made
it), every logged training term from `metrics.csv` (each loss term, lr, momentum, temperature, grad norm,
skipped samples, throughput, the online monitor) and validation metrics (e.g. fine-tuning top-1), the run's wall time and images/s, 2-D projections of
features coloured by label, confusion matrices and segmentation overlays. Figures are named after each
result's path, so several backbones in one folder keep their own.

With `report.baselines=true` the missing baselines are run first: a random init of each trained
backbone's architecture (same protocol, data and settings) and, on image data, the raw pixels.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import ConfusionMatrixDisplay

from eval.api import run_protocol
from eval.config import ReportConfig
from eval.results import format_cell, format_table, read_results
from ssl_distill.backbones import load_backbone
from ssl_distill.registry import DATASETS
from ssl_distill.runtime import cpu_threads

Block = tuple[str, Any]  # ("h1" | "h2" | "p", text), ("table", rows), ("img", (path, caption))
MASK_COLORS = ListedColormap(
    ["#00000000", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c"]
)


def find_metrics_csv(root: Path) -> Path | None:
    """The trainer's metrics.csv in the directory or its parent (results usually sit in <run>/eval)."""
    for candidate in (root / "metrics.csv", root.parent / "metrics.csv"):
        if candidate.is_file():
            return candidate
    return None


def training_columns(table: pd.DataFrame) -> list[str]:
    """Every logged term of metrics.csv worth a panel: numeric columns with a value, but `step` and `epoch`."""
    return [
        c
        for c in table.columns
        if c not in ("step", "epoch") and pd.api.types.is_numeric_dtype(table[c]) and table[c].notna().any()
    ]


def plot_training(csv: Path, path: Path, title: str = "training") -> Path | None:
    """Every numeric column of metrics.csv against `step`, one panel each (log scale for a positive loss)."""
    table = pd.read_csv(csv)
    if "step" not in table:
        return None
    columns = training_columns(table)
    if not columns:
        return None
    cols = min(3, len(columns))
    rows = -(-len(columns) // cols)
    figure = Figure(figsize=(4 * cols, 2.6 * rows), layout="constrained")
    grid = figure.subplots(rows, cols, squeeze=False)
    for axes, column in zip(grid.flat, columns):
        series = table[["step", column]].dropna()
        axes.plot(series["step"], series[column], linewidth=1.2, marker="." if len(series) < 30 else None)
        if "loss" in column and (series[column] > 0).all():
            axes.set_yscale("log")
        axes.set_title(column, fontsize=9)
        axes.tick_params(labelsize=7)
    for axes in list(grid.flat)[len(columns):]:
        axes.set_visible(False)
    figure.suptitle(title)
    figure.savefig(path, dpi=100)
    return path


HEADLINES = ("top1", "miou", "r2", "recall@1", "auroc", "balanced_accuracy", "accuracy", "effective_rank/val")


def headline(record: dict[str, Any]) -> tuple[str, float] | tuple[None, None]:
    """The score a result is compared by (kNN/linear top-1, mIoU, R², recall@1, AUROC, ...)."""
    metrics = record.get("metrics", {})
    for name in HEADLINES:
        if metrics.get(name) is not None:
            return name, metrics[name]
    return None, None


def _n(record: dict[str, Any]) -> str:
    sizes = record.get("n") or record.get("details", {}).get("n") or {}
    return " → ".join(str(v) for v in sizes.values())


def comparison_rows(results: list[tuple[str, Path, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per result, grouped by (protocol, data), best score first; baselines marked."""
    rows = []
    for label, _, record in results:
        metric, score = headline(record)
        rows.append(
            {
                "protocol": record["protocol"],
                "data": record.get("data", ""),
                "backbone": record.get("backbone", ""),
                "kind": record.get("baseline") or "trained",
                "metric": metric or "",
                "score": score,
                "n": _n(record),
                "command": record.get("command") or "",
                "file": label,
            }
        )
    return sorted(rows, key=lambda r: (r["protocol"], r["data"], -(r["score"] if r["score"] is not None else -1e9)))


def validation_rows(csv: Path, last: int = 10) -> list[dict[str, Any]]:
    """The trainer's validation metrics (`val_*` columns, e.g. val_top1 with val_n) at the last `last` steps
    that have them."""
    table = pd.read_csv(csv)
    columns = [c for c in table.columns if c.startswith("val_")]
    if "step" not in table or not columns:
        return []
    rows = table[["step", *columns]].dropna(subset=columns, how="all").tail(last)
    return [{k: (int(v) if k in ("step", "val_n") else v) for k, v in row.items()} for row in rows.to_dict("records")]


def project(
    feats: np.ndarray, method: str = "auto", tsne_max: int = 1000, seed: int = 0
) -> tuple[np.ndarray, str]:
    """(N, D) -> (N, 2) with PCA, or t-SNE ('auto': t-SNE up to tsne_max points)."""
    if method == "tsne" or (method == "auto" and len(feats) <= tsne_max):
        perplexity = float(min(30.0, max(2.0, (len(feats) - 1) / 3)))
        with cpu_threads(1):
            return TSNE(perplexity=perplexity, init="pca", random_state=seed).fit_transform(feats), "t-SNE"
    return PCA(n_components=2, random_state=seed).fit_transform(feats), "PCA"


def plot_projection(
    sample: dict[str, np.ndarray], path: Path, title: str, method: str, tsne_max: int
) -> Path:
    points, name = project(sample["feats"], method, tsne_max)
    classes = [str(c) for c in sample["classes"]]
    figure = Figure(figsize=(5.5, 5), layout="constrained")
    axes = figure.subplots()
    for label in np.unique(sample["labels"]):
        chosen = sample["labels"] == label
        text = classes[label] if label < len(classes) else str(label)
        axes.scatter(points[chosen, 0], points[chosen, 1], s=6, label=text, alpha=0.8)
    axes.set(title=f"{title} ({name})", xticks=[], yticks=[])
    axes.legend(fontsize=7, markerscale=2, loc="best")
    figure.savefig(path, dpi=110)
    return path


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path, title: str) -> Path:
    matrix_np = np.asarray(matrix)
    labels = classes if len(classes) == len(matrix_np) else [str(i) for i in range(len(matrix_np))]
    size = 3 + 0.35 * len(labels)
    figure = Figure(figsize=(size, size), layout="constrained")
    axes = figure.subplots()
    ConfusionMatrixDisplay(matrix_np, display_labels=labels).plot(ax=axes, colorbar=False, cmap="Blues")
    axes.set_title(title)
    figure.savefig(path, dpi=110)
    return path


def plot_overlays(arrays: dict[str, np.ndarray], path: Path) -> Path:
    """Rows: image, ground truth over the image, prediction over the image."""
    images, masks, predictions = arrays["images"], arrays["masks"], arrays["predictions"]
    count = len(images)
    figure = Figure(figsize=(1.6 * count, 5), layout="constrained")
    grid = figure.subplots(3, count, squeeze=False)
    for i in range(count):
        for row, (overlay, name) in enumerate(
            ((None, "image"), (masks[i], "truth"), (predictions[i], "prediction"))
        ):
            axes = grid[row, i]
            axes.imshow(images[i])
            if overlay is not None:
                axes.imshow(
                    overlay,
                    cmap=MASK_COLORS,
                    vmin=0,
                    vmax=MASK_COLORS.N - 1,
                    alpha=0.55,
                    interpolation="nearest",
                )
            axes.set_xticks([])
            axes.set_yticks([])
            if i == 0:
                axes.set_ylabel(name)
    figure.savefig(path, dpi=110)
    return path


def _figures(path: Path, stem: str, record: dict[str, Any], figures: Path, cfg: DictConfig) -> list[Path]:
    made = []
    title = f"{record['protocol']} · {record.get('data', '')}"
    details, artifacts = record.get("details", {}), record.get("artifacts", {})
    if "sample" in artifacts and (path.parent / artifacts["sample"]).is_file():
        with np.load(path.parent / artifacts["sample"]) as sample:
            arrays = {key: sample[key] for key in sample.files}
        if len(arrays["feats"]) >= 3:
            made.append(
                plot_projection(
                    arrays, figures / f"{stem}.projection.png", title, cfg.projection, cfg.tsne_max
                )
            )
    if "confusion" in details:
        made.append(
            plot_confusion(
                details["confusion"], details.get("classes", []), figures / f"{stem}.confusion.png", title
            )
        )
    if "overlays" in artifacts and (path.parent / artifacts["overlays"]).is_file():
        with np.load(path.parent / artifacts["overlays"]) as overlays:
            made.append(
                plot_overlays(
                    {key: overlays[key] for key in overlays.files}, figures / f"{stem}.overlays.png"
                )
            )
    return made


def render_markdown(blocks: list[Block]) -> str:
    parts = []
    for kind, value in blocks:
        if kind in ("h1", "h2"):
            parts.append(f"{'#' if kind == 'h1' else '##'} {value}")
        elif kind == "p":
            parts.append(value)
        elif kind == "table":
            parts.append(format_table(value))
        elif kind == "img":
            parts.append(f"![{value[1]}]({value[0]})")
    return "\n\n".join(parts) + "\n"


def render_html(blocks: list[Block], title: str) -> str:
    parts = []
    for kind, value in blocks:
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{html.escape(value)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(value)}</p>")
        elif kind == "table" and value:
            columns = list(dict.fromkeys(key for row in value for key in row))
            head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
            body = "".join(
                "<tr>"
                + "".join(f"<td>{html.escape(format_cell(row.get(c)))}</td>" for c in columns)
                + "</tr>"
                for row in value
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            parts.append(
                f'<figure><img src="{html.escape(value[0])}" alt="{html.escape(value[1])}"></figure>'
            )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def _stem(label: str) -> str:
    """A result's figure name from its path under the report roots: 'a/eval/knn-mnist.json' -> 'a_eval_knn-mnist'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label.removesuffix(".json")).strip("_")


def _run_stats(root: Path) -> dict[str, Any] | None:
    for candidate in (root / "run_stats.json", root.parent / "run_stats.json"):
        if candidate.is_file():
            stats = json.loads(candidate.read_text())
            return {key: stats.get(key) for key in ("steps", "train_seconds", "images", "images_per_s")}
    return None


def add_baselines(root: Path, results: list[tuple[str, Path, dict[str, Any]]]) -> list[Path]:
    """Run the baselines missing next to the trained backbones' results: a random init of each one's
    architecture with the same protocol, data and settings (into its `eval/random-init-seed0`), and on
    image data the raw pixels at the backbone's input size (into `<root>/baselines/`)."""
    have = {
        (r["protocol"], r.get("data"), r.get("baseline"), (r.get("args") or {}).get("backbone"))
        for _, _, r in results
    }
    pixels_done = {(r["protocol"], r.get("data")) for _, _, r in results if r.get("baseline") == "pixels"}
    written = []
    for _, _, record in results:
        args = record.get("args")
        if record.get("baseline") or not args:
            continue
        protocol, data, overrides = record["protocol"], args["data"], list(args["overrides"])
        if (protocol, record.get("data"), "random init", args["backbone"]) not in have:
            written.append(run_protocol(protocol, args["backbone"], data, [*overrides, "model.weights=none"])[1])
            have.add((protocol, record.get("data"), "random init", args["backbone"]))
        video = "num_frames" in DATASETS.get(record["data"]).Config.__dataclass_fields__
        if not video and (protocol, record.get("data")) not in pixels_done:
            spec = load_backbone(args["backbone"]).spec if Path(args["backbone"]).exists() else {}
            size = spec.get("img_size") or record.get("config", {}).get("model", {}).get("img_size") or 32
            kept = [o for o in overrides if not o.startswith("model.")]
            out = root / "baselines" / f"pixels-{size}px"
            written.append(run_protocol(protocol, "pixels", data, [*kept, f"model.img_size={size}"], out)[1])
            pixels_done.add((protocol, record.get("data")))
    return written


def build_report(
    roots: str | Path | Sequence[str | Path], out: str | Path | None = None, cfg: DictConfig | None = None
) -> Path:
    """Collect the results under `roots` into `<out>/report.md` and `<out>/report.html` (default
    `<first root>/report`)."""
    roots = [Path(r) for r in ([roots] if isinstance(roots, (str, Path)) else roots)]
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"report: no such directory: {root}")
    cfg = cfg if cfg is not None else OmegaConf.structured(ReportConfig)
    out = Path(out) if out is not None else roots[0] / "report"
    figures = out / "figures"
    def collect() -> list[tuple[str, Path, dict[str, Any]]]:
        found = []
        for root in roots:
            prefix = f"{root.resolve().name}/" if len(roots) > 1 else ""
            for path, record in read_results(root):
                if out.resolve() not in path.resolve().parents:
                    found.append((prefix + str(path.relative_to(root)), path, record))
        return found

    results = collect()
    if cfg.baselines and results:
        add_baselines(roots[0], results)
        results = collect()
    csvs = [(root, csv) for root in roots if (csv := find_metrics_csv(root)) is not None]
    if not results and not csvs:
        raise FileNotFoundError(f"report: no result JSONs or metrics.csv under {', '.join(map(str, roots))}")
    figures.mkdir(parents=True, exist_ok=True)
    title = f"Evaluation report: {', '.join(root.resolve().name for root in roots)}"
    blocks: list[Block] = [("h1", title)]
    if results:
        blocks.append(("h2", "Comparison"))
        note = "Best first within each protocol and dataset; n: samples (bank or train → queries or test)."
        blocks.append(("p", note))
        blocks.append(("table", comparison_rows(results)))
    for root, csv in csvs:
        name = root.resolve().name
        blocks.append(("h2", f"Training · {name}"))
        if (stats := _run_stats(root)) is not None:
            blocks.append(("table", [stats]))
        if (plot := plot_training(csv, figures / f"training-{_stem(name)}.png", f"training · {name}")) is not None:
            blocks.append(("img", (str(plot.relative_to(out)), f"training · {name}")))
        if validation := validation_rows(csv):
            blocks.append(("h2", "Validation during training"))
            if len(csvs) > 1:
                blocks.append(("p", name))
            blocks.append(("table", validation))
    for label, path, record in results:
        blocks.append(
            ("h2", f"{record['protocol']} · {record.get('data', '')} · {record.get('backbone', '')}")
        )
        blocks.append(("p", f"{label}, written {record.get('created', '?')}, {record.get('seconds', '?')} s"))
        if record.get("command"):
            blocks.append(("p", f"command: {record['command']}"))
        for warning in record.get("warnings", []):
            blocks.append(("p", f"warning: {warning}"))
        blocks.append(("table", record.get("rows", [])))
        for figure in _figures(path, _stem(label), record, figures, cfg):
            blocks.append(("img", (str(figure.relative_to(out)), figure.stem)))
    (out / "report.md").write_text(render_markdown(blocks))
    page = out / "report.html"
    page.write_text(render_html(blocks, title))
    return page
