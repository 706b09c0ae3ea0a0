"""The main job on bundled data: pretrain a small MAE teacher on MNIST, distill a DMAE student from
it, then evaluate both against a randomly initialised backbone of the student's shape.

    python -m ssl_distill.demo [--out runs] [key=value ...]   (overrides apply to both runs)

The one module of `ssl_distill` that imports the separate `eval` package (inside `main`, for its last
step): the demo spans training and evaluation. Nothing else in `ssl_distill` depends on `eval`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ssl_distill.config import ConfigError, load_config
from ssl_distill.engine import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs", help="folder for the runs (default: runs)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation table")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        teacher_cfg = load_config(CONFIGS / "mae/tiny_mnist.yaml", [f"run.out_dir={args.out}", *args.overrides])
        print("== 1/3 MAE teacher on bundled MNIST ==", flush=True)
        teacher = train(teacher_cfg)
        student_cfg = load_config(
            CONFIGS / "dmae/tiny_mnist.yaml",
            [f"run.out_dir={args.out}", f"objective.teacher.source={teacher.run_dir}", *args.overrides],
        )
        print("== 2/3 DMAE student distilled from it ==", flush=True)
        student = train(student_cfg)
    except ConfigError as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 2
    for label, result in (("MAE teacher", teacher), ("DMAE student", student)):
        print(f"{label:13s} run {result.run_dir}  checkpoint {result.checkpoint}  backbone {result.exported}")
    if not args.no_eval:
        print("== 3/3 frozen-feature evaluation (kNN and linear probe on MNIST val, segmentation on shapes) ==", flush=True)
        from eval.api import evaluate, format_results

        out = Path(args.out) / "eval"
        rows = {
            "MAE teacher": evaluate(teacher.exported, out=out / "mae_teacher"),
            "DMAE student": evaluate(student.exported, out=out / "dmae_student"),
            "random init (student shape)": evaluate(student.exported, overrides=["model.weights=none"], out=out / "random_init"),
        }
        print(format_results(rows))
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
