"""Write BENCHMARKS.md from the benchmark JSON files in benchmarks/results/ (nothing in it is typed by hand).

    python benchmarks/make_benchmarks_md.py [--results benchmarks/results] [--out BENCHMARKS.md]

Each section names the script that measured it, the command it recorded, when and under what load it
ran, and renders every list of rows in its JSON as a table (nested sections get their own heading) and
every mapping of plain values as a one-row table. A JSON that is missing shows as "not measured yet"
with the command that would measure it. Figures: throughput against DataLoader workers (video clips
and shard streaming), and approximate search's speed-up against its recall.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# file stem -> (title, what it answers, the command that regenerates it)
SECTIONS: list[tuple[str, str, str, str]] = [
    (
        "objective_overhead",
        "1. Objective overhead and partial teachers (issue 14, items 1-2)",
        "Median step time of every registered objective over the irreducible cost of that step (target "
        "<= 1.15), and the speed-up of DMAE's and G2SD's stop-early teachers over running the whole teacher.",
        "python benchmarks/objective_overhead.py --out benchmarks/results",
    ),
    (
        "loader_benchmark",
        "2. Video loading, per-item seeding, AdamW, host syncs (issue 14, item 3 and the fixes)",
        "Clips/s of the DISCOVR and tiny-echo sampling with decord and PyAV, 0/1/2 workers; loader "
        "throughput over the training step's consumption (must stay above 1); seeding and AdamW costs.",
        "python benchmarks/loader_benchmark.py --out benchmarks/results",
    ),
    (
        "search_benchmark",
        "3. kNN and retrieval: exact and approximate search (issue 14, item 4; issue 15)",
        "Flat faiss against torch.mm + topk and the matrix-product bound; ivf / ivfpq / hnsw recall@10, kNN "
        "top-1 and speed against flat; peak memory; import time of eval.knn.",
        "python benchmarks/search_benchmark.py --out benchmarks/results",
    ),
    (
        "scale_benchmark",
        "4. Shards, sharded extraction, extraction and probe cost per 10k images (issue 14, item 5; issue 15)",
        "Images/s from WebDataset shards against the folder of the same images (0/1/2 workers); 4 local "
        "array jobs against one process (identical features); ViT-S/16 extraction and linear probes.",
        "python benchmarks/scale_benchmark.py --out benchmarks/results",
    ),
    (
        "gpu_throughput",
        "4b. GPU throughput: DINO and DMAE ViT-S/16 at 224 px, bf16 (issue 14, item 6)",
        "Images/s of a DINO and a DMAE training step beside plain timm ViT-S/16 forward + backward on the same "
        "card and batch; peak memory. Runs only where a CUDA device is lent.",
        "python benchmarks/gpu_throughput.py --out benchmarks/results",
    ),
    (
        "claims",
        "5. Claims with seeds and 95% intervals (issue 14, item 7)",
        "Every objective against the baselines its paper beats, same budget, >= 3 seeds, mean ± 95% "
        "interval, random-init and raw-pixel rows, and a verdict per claim.",
        "python benchmarks/claims.py --out benchmarks/results",
    ),
    (
        "digits_walk",
        "6. The new-user walk on scikit-learn digits (issue 10)",
        "MAE with the online kNN monitor against random init and raw pixels; the class-gap and moved-file checks.",
        "python benchmarks/digits_walk.py --out runs/digits_walk",
    ),
    (
        "mae_distillers",
        "7. MAE-teacher distillers: G2SD and Hybrid Distillation (issue 11)",
        "G2SD against the same student trained as MAE; Hybrid against DMAE and each of its terms alone.",
        "python benchmarks/mae_distillers.py --out runs/benchmarks/mae_distillers",
    ),
    (
        "patch_distill_cmd",
        "8. CMD against DINO on shapes_fine (issue 12)",
        "Same ViT, steps, crops, heads and EMA; kNN, linear probe and CMD's retrieval protocol.",
        "python benchmarks/patch_distill_benchmark.py --part cmd --out runs/benchmarks/cmd",
    ),
    (
        "patch_distill_cotap",
        "9. CoTAP continued from DINO on shapes_scenes (issue 12)",
        "Segmentation transfer mIoU and kNN of CoTAP against its DINO start and DINO continued as long.",
        "python benchmarks/patch_distill_benchmark.py --part cotap --out runs/benchmarks/cotap",
    ),
    (
        "mrdd_benchmark",
        "10. MRDD on EdgeMNIST-5k (issue 13)",
        "Consistent, specific and combined representations: k-means ACC / NMI / ARI and linear probe.",
        "python benchmarks/mrdd_benchmark.py --out runs/benchmarks/mrdd",
    ),
    (
        "tips_benchmark",
        "11. TIPS against CLIP-only on shapes image-text data (issue 13)",
        "Zero-shot top-1, image-text retrieval R@1 per caption stream, segmentation mIoU.",
        "python benchmarks/tips_benchmark.py --out runs/benchmarks/tips",
    ),
]
SKIPPED_KEYS = {"command", "created", "machine", "seconds", "wall_s", "cpu_s", "benchmark", "torch", "load_average"}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    return "" if value is None else str(value).replace("|", "\\|")


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown table of dict rows (columns in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return [*lines, ""]


def _nested(value: Any) -> bool:
    return isinstance(value, dict) or (isinstance(value, list) and bool(value) and isinstance(value[0], dict))


def rows_table(rows: list[dict[str, Any]], level: int) -> list[str]:
    """A table of the plain columns; a nested cell (e.g. a profile) follows it under the row's first value."""
    lines = table([{k: v for k, v in row.items() if not _nested(v)} for row in rows])
    for row in rows:
        label = _cell(next(iter(row.values())))
        for key, value in row.items():
            if _nested(value):
                lines += render(value, f"{label}: {key.replace('_', ' ')}", min(level + 1, 6))
    return lines


def render(node: Any, title: str, level: int) -> list[str]:
    """Lists of dict rows become tables, mappings of plain values one-row tables, nested mappings headings."""
    if isinstance(node, list) and node and all(isinstance(row, dict) for row in node):
        return [f"{'#' * level} {title}", "", *rows_table(node, level)] if title else rows_table(node, level)
    if not isinstance(node, dict):
        return []
    plain = {k: v for k, v in node.items() if k not in SKIPPED_KEYS and not _nested(v)}
    lines = [f"{'#' * level} {title}", ""] if title and (plain or node) else []
    if plain:
        lines += table([plain])
    for key, value in node.items():
        if key in SKIPPED_KEYS or key in plain:
            continue
        lines += render(value, key.replace("_", " "), min(level + 1, 6))
    return lines


def _yes(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "no"


def claims_sections(record: dict[str, Any]) -> list[str]:
    """claims.json: per section, one table of rows x metrics (mean ± 95% half-width, n seeds) and its verdicts."""
    lines = render({k: v for k, v in record.items() if k != "sections"}, "", 2)
    verdicts = [{"section": name, "claim": f"{c['method']} {'>' if c.get('higher_is_better', True) else '<'} "
                 f"{c['baseline']}", "metric": c["metric"], "method - baseline": f"{c['method_mean'] - c['baseline_mean']:+.3f}",
                 "seeds": c["n"], "verdict": c["verdict"],
                 "beat random init (method / baseline)": f"{_yes(c.get('method_beats_random'))} / "
                                                         f"{_yes(c.get('baseline_beats_random'))}"}
                for name, section in record.get("sections", {}).items() for c in section.get("claims", [])]
    if verdicts:
        counts = {v: sum(row["verdict"] == v for row in verdicts) for v in dict.fromkeys(r["verdict"] for r in verdicts)}
        lines += ["Every claim at a glance (" + ", ".join(f"{n} {v}" for v, n in counts.items()) + "):", ""]
        lines += table(verdicts)
    for name, section in record.get("sections", {}).items():
        lines += [f"### {section.get('title', name)}", ""]
        if section.get("command"):
            load = (section.get("load_average") or {}).get("start")
            where = [f"command `{section['command']}`", f"mode {section.get('mode', '?')}",
                     f"{section.get('threads', '?')} thread(s)", f"measured {section.get('created', '?')}"]
            where += [f"load average at start {_cell(load[0])}"] if load else []
            where += [f"{section['wall_s'] / 60:.1f} min wall"] if section.get("wall_s") is not None else []
            lines += [f"_{', '.join(where)}._", ""]
        if section.get("budget"):
            lines += table([section["budget"]])
        rows = []
        for model, metrics in section.get("rows", {}).items():
            row: dict[str, Any] = {"row": model}
            for metric, value in metrics.items():
                if isinstance(value, dict) and "mean" in value:
                    row[metric] = f"{_cell(value['mean'])} ± {_cell(value['ci95'])} (n={value['n']})"
                elif isinstance(value, dict) and "samples" in value:
                    row[metric] = _cell(value["samples"])
            rows.append(row)
        if rows:
            lines += table(rows)
        if section.get("claims"):
            lines += table([
                {"claim": f"{c['method']} {'>' if c.get('higher_is_better', True) else '<'} {c['baseline']}",
                 "metric": c["metric"], "method": f"{_cell(c['method_mean'])} ± {_cell(c['method_ci95'])}",
                 "baseline": f"{_cell(c['baseline_mean'])} ± {_cell(c['baseline_ci95'])}", "seeds": c["n"],
                 "verdict": c["verdict"]}
                for c in section["claims"]
            ])
        if section.get("below_pixels"):
            below = "; ".join(f"{metric}: {', '.join(models)}" for metric, models in section["below_pixels"].items())
            lines += [f"Below the raw pixels: {below}.", ""]
    return lines


def provenance(record: dict[str, Any]) -> str:
    parts = []
    if record.get("created"):
        parts.append(f"measured {record['created']}")
    machine = record.get("machine") or {}
    load = machine.get("load_average_at_start") or (record.get("load_average") or {}).get("start")
    if machine.get("cpus"):
        parts.append(f"{machine['cpus']} CPU cores")
    if load:
        parts.append(f"load average at start {_cell(load[0] if isinstance(load, list) else load)}")
    for key in ("seconds", "wall_s"):
        if record.get(key) is not None:
            parts.append(f"{float(record[key]) / 60:.1f} min wall")
            break
    return ", ".join(parts)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, axis, out: Path) -> Path:
    """Legend, grid, tight layout; writes `out` (PNG) and closes the figure."""
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    _pyplot().close(figure)
    return out


def throughput_figure(results: Path, out: Path) -> Path | None:
    """Clips/s (loader benchmark) and images/s (shard streaming) against DataLoader workers."""
    plt = _pyplot()
    curves = []
    loader = results / "loader_benchmark.json"
    if loader.is_file():
        rows = json.loads(loader.read_text())["sections"].get("clips_per_s", [])
        for sampling in dict.fromkeys(row["sampling"] for row in rows):
            mine = [row for row in rows if row["sampling"] == sampling]
            for column in ("now clips/s", "decord clips/s"):
                curves.append((f"{sampling}: {column}", [r["workers"] for r in mine], [r[column] for r in mine]))
    scale = results / "scale_benchmark.json"
    if scale.is_file():
        rows = json.loads(scale.read_text())["streaming"]
        for column in ("folder_img_s", "shards_img_s"):
            curves.append((f"MNIST {column.replace('_img_s', '')} images/s", [r["workers"] for r in rows], [r[column] for r in rows]))
    if not curves:
        return None
    figure, axis = plt.subplots(figsize=(7, 4))
    for label, workers, values in curves:
        axis.plot(workers, values, marker="o", label=label)
    axis.set_xlabel("DataLoader workers")
    axis.set_ylabel("items / s")
    axis.set_xticks(sorted({w for _, ws, _ in curves for w in ws}))
    return _save(figure, axis, out)


def search_figure(results: Path, out: Path) -> Path | None:
    """Speed-up over exact search against recall@10, one curve per approximate index and data set."""
    plt = _pyplot()
    path = results / "search_benchmark.json"
    if not path.is_file():
        return None
    rows = [row for row in json.loads(path.read_text())["search"] if row["index"] != "flat"]
    if not rows:
        return None
    figure, axis = plt.subplots(figsize=(7, 4))
    for data, index in dict.fromkeys((row["data"], row["index"]) for row in rows):
        mine = [row for row in rows if row["data"] == data and row["index"] == index]
        style = "-" if data == "clustered" else ":"
        axis.plot([r["recall@10"] for r in mine], [r["speedup"] for r in mine], style, marker="o", label=f"{data}: {index}")
        for r in mine:
            axis.annotate(r["param"].split("=")[-1], (r["recall@10"], r["speedup"]), fontsize=6, xytext=(3, 3),
                          textcoords="offset points")
    n, queries = rows[0]["n"], rows[0]["queries"]
    axis.set_xlabel(f"recall@10 against exact search ({n:,} x {queries:,} queries)")
    axis.set_ylabel("speed-up over exact (flat) search")
    axis.set_yscale("log")
    return _save(figure, axis, out)


def build(results: Path, out: Path) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/make_benchmarks_md.py` from the JSON files in `benchmarks/results/`; "
        "do not edit by hand. Every figure is a median or a ratio measured in one run on one machine (the "
        "machine, its load and the command are recorded with each table). The machine is shared: absolute "
        "times move with its load, ratios measured in one interleaved run much less. How each benchmark is "
        "built: the docstring of its script and [benchmarks/README.md](benchmarks/README.md).",
        "",
    ]
    figure = throughput_figure(results, out.parent / "benchmarks" / "results" / "throughput_vs_workers.png")
    search = search_figure(results, out.parent / "benchmarks" / "results" / "search_speedup_vs_recall.png")
    for stem, title, what, command in SECTIONS:
        path = results / f"{stem}.json"
        lines += [f"## {title}", "", what, ""]
        if not path.is_file():
            lines += [f"Not measured yet: `{command}`.", ""]
            continue
        record = json.loads(path.read_text())
        lines += [f"Regenerate: `{command}`. Recorded command: `{record.get('command', '?')}`.", ""]
        if (where := provenance(record)):
            lines += [f"_{where}._", ""]
        lines += claims_sections(record) if stem == "claims" else render(record, "", 2)
        if stem == "loader_benchmark" and figure is not None:
            lines += [f"![throughput against workers]({figure.relative_to(out.parent).as_posix()})", ""]
        if stem == "search_benchmark" and search is not None:
            lines += [f"![search speed-up against recall]({search.relative_to(out.parent).as_posix()})", ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args()
    args.out.write_text(build(args.results, args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
