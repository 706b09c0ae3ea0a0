"""One page (Markdown + HTML, PNG figures) from a run or results directory: a summary of every result
JSON, training loss curves and validation metrics (e.g. fine-tuning top-1) from `metrics.csv`, 2-D projections of features coloured by label, confusion
matrices and segmentation overlays.
"""

from __future__ import annotations

import html
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

from eval.config import ReportConfig
from eval.results import format_cell, format_table, read_results
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


def plot_losses(csv: Path, path: Path) -> Path | None:
    """Loss columns (any with 'loss' in the name) against `step`; log scale when all are positive."""
    table = pd.read_csv(csv)
    if "step" not in table:
        return None
    columns = [c for c in table.columns if "loss" in c and pd.api.types.is_numeric_dtype(table[c])]
    if not columns:
        return None
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.subplots()
    for column in columns:
        series = table[["step", column]].dropna()
        axes.plot(series["step"], series[column], label=column, linewidth=1.2)
    if (table[columns].dropna(how="all") > 0).all().all():
        axes.set_yscale("log")
    axes.set(xlabel="step", ylabel="loss", title="training losses")
    axes.legend(fontsize=8)
    figure.savefig(path, dpi=110)
    return path


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


def _summary(record: dict[str, Any]) -> str:
    metrics = record.get("metrics", {})
    headline = {k: v for k, v in metrics.items() if "@" not in k and "/" not in k} or metrics
    return ", ".join(f"{k}={format_cell(v)}" for k, v in list(headline.items())[:6])


def _figures(path: Path, record: dict[str, Any], figures: Path, cfg: DictConfig) -> list[Path]:
    stem, made = path.stem, []
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


def build_report(root: str | Path, out: str | Path | None = None, cfg: DictConfig | None = None) -> Path:
    """Collect results under `root` into `<out>/report.md` and `<out>/report.html` (default root/report)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"report: no such directory: {root}")
    cfg = cfg if cfg is not None else OmegaConf.structured(ReportConfig)
    out = Path(out) if out is not None else root / "report"
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    results = [(path, record) for path, record in read_results(root) if out not in path.parents]
    csv = find_metrics_csv(root)
    if not results and csv is None:
        raise FileNotFoundError(f"report: no result JSONs or metrics.csv under {root}")
    blocks: list[Block] = [("h1", f"Evaluation report: {root.resolve().name}")]
    if results:
        blocks.append(("h2", "Summary"))
        blocks.append(
            (
                "table",
                [
                    {
                        "protocol": record["protocol"],
                        "data": record.get("data", ""),
                        "backbone": record.get("backbone", ""),
                        "metrics": _summary(record),
                        "file": str(path.relative_to(root)),
                    }
                    for path, record in results
                ],
            )
        )
    if csv is not None and (loss := plot_losses(csv, figures / "losses.png")) is not None:
        blocks += [("h2", "Training"), ("img", (str(loss.relative_to(out)), "training losses"))]
    if csv is not None and (validation := validation_rows(csv)):
        blocks += [("h2", "Validation during training"), ("table", validation)]
    for path, record in results:
        blocks.append(
            ("h2", f"{record['protocol']} · {record.get('data', '')} · {record.get('backbone', '')}")
        )
        blocks.append(
            (
                "p",
                f"{path.relative_to(root)}, written {record.get('created', '?')}, {record.get('seconds', '?')} s",
            )
        )
        blocks.append(("table", record.get("rows", [])))
        for figure in _figures(path, record, figures, cfg):
            blocks.append(("img", (str(figure.relative_to(out)), figure.stem)))
    (out / "report.md").write_text(render_markdown(blocks))
    page = out / "report.html"
    page.write_text(render_html(blocks, f"Evaluation report: {root.resolve().name}"))
    return page
