"""benchmarks/claims.py: the interval helper against scipy's t-distribution, the verdict rule on constructed
intervals, and a --quick run of two cheap sections end to end (the benchmark itself is not a test)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from scipy import stats

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def claims(monkeypatch):
    spec = importlib.util.spec_from_file_location("claims", BENCHMARKS / "claims.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("values", [[1.0, 2.0, 3.0], [0.81, 0.79, 0.84, 0.80], [0.5, 0.52]])
def test_interval_matches_scipy_t(claims, values):
    mean, ci = claims.mean_ci95(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / len(values), scale=stats.sem(values))
    assert mean == pytest.approx((low + high) / 2, abs=1e-12)
    assert ci == pytest.approx((high - low) / 2, rel=1e-12)


def test_interval_by_hand_and_refuses_one_value(claims):
    # [1, 2, 3]: mean 2, s = 1, t_{0.975, 2} = 4.302653 -> 4.302653 / sqrt(3)
    assert claims.mean_ci95([1.0, 2.0, 3.0]) == pytest.approx((2.0, 4.302653 / math.sqrt(3)), rel=1e-6)
    assert claims.mean_ci95([0.7, 0.7, 0.7]) == pytest.approx((0.7, 0.0), abs=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        claims.mean_ci95([0.9])


@pytest.mark.parametrize(
    ("method", "baseline", "higher", "expected"),
    [
        ((0.80, 0.02), (0.70, 0.03), True, "reproduces"),  # 0.78 > 0.73
        ((0.70, 0.03), (0.80, 0.02), True, "does not reproduce"),
        ((0.80, 0.06), (0.70, 0.05), True, "inconclusive"),  # 0.74 < 0.75: overlap
        ((0.80, 0.05), (0.70, 0.05), True, "inconclusive"),  # touching intervals do not separate
        ((0.10, 0.01), (0.20, 0.01), False, "reproduces"),  # lower is better
        ((0.30, 0.01), (0.20, 0.01), False, "does not reproduce"),
        ((0.90, 0.00), (0.10, math.nan), True, "inconclusive"),
    ],
)
def test_verdict(claims, method, baseline, higher, expected):
    assert claims.verdict(method, baseline, higher) == expected


def test_summary_and_claims_on_constructed_seeds(claims):
    per_seed = [{"A": {"top1": a, "n_val": 100}, "B": {"top1": b, "n_val": 100}}
                for a, b in ((0.90, 0.50), (0.92, 0.52), (0.91, 0.51))]
    rows = claims.summarize(per_seed, {claims.PIXELS: {"top1": 0.95, "n_val": 100}})
    assert rows["A"]["top1"]["n"] == 3 and rows["A"]["top1"]["values"] == [0.90, 0.92, 0.91]
    assert rows["A"]["n_val"] == {"samples": [100]}
    assert rows[claims.PIXELS]["top1"] == {"mean": 0.95, "ci95": 0.0, "n": 1, "values": [0.95], "deterministic": True}
    judged = claims.judge([claims.Claim("A", "B", "top1"), claims.Claim("B", "A", "top1")], rows)
    assert [c["verdict"] for c in judged] == ["reproduces", "does not reproduce"]
    assert claims.below_pixels(rows) == {"top1": ["A", "B"]}
    assert judged[0]["method_beats_random"] is None  # no random-init row: nothing to compare with


def test_claims_say_when_no_row_beats_random_init(claims):
    # A separates from both random rows; B sits inside random init (mean)'s interval; lower-is-better flips it
    per_seed = [{"A": {"top1": a, "err": 1 - a}, "B": {"top1": b, "err": 1 - b}, "random init (cls)": {"top1": r1, "err": 1 - r1},
                 "random init (mean)": {"top1": r2, "err": 1 - r2}}
                for a, b, r1, r2 in ((0.90, 0.50, 0.40, 0.52), (0.92, 0.52, 0.41, 0.50), (0.91, 0.51, 0.42, 0.51))]
    rows = claims.summarize(per_seed, {})
    judged = claims.judge([claims.Claim("A", "B", "top1"), claims.Claim("B", "random init (cls)", "top1"),
                           claims.Claim("A", "B", "err", higher_is_better=False)], rows)
    assert [(c["method_beats_random"], c["baseline_beats_random"]) for c in judged] == [
        (True, False), (False, None), (True, False)]
    assert [c["verdict"] for c in judged] == ["reproduces", "reproduces", "reproduces"]


def test_three_seeds_unless_quick(claims):
    with pytest.raises(SystemExit) as exit_:
        claims.main(["--seeds", "2", "--sections", "mae"])
    assert exit_.value.code == 2


def test_combine_keeps_each_sections_provenance(claims, tmp_path):
    # an older record stamps provenance at the top level only; a newer one per section; the later wins a clash
    def rows(method: str, top1: float) -> dict:
        per_seed = [{method: {"knn_top1": top1 + d, "linear_top1": top1 + d}, claims.RANDOM: {"knn_top1": 0.1 + d,
                     "linear_top1": 0.1 + d}} for d in (0.0, 0.01, 0.02)]
        return claims.summarize(per_seed, {})

    old = {"command": "python benchmarks/claims.py --steps 400", "mode": "reduced", "threads": 1, "created": "t0",
           "machine": {"load_average_start": [3.0], "load_average_end": [7.0]}, "note": "stopped by hand",
           "sections": {"dino": {"rows": rows("DINO", 0.5), "claims": []}, "mae": {"rows": rows("MAE", 0.1)}}}
    new = {"command": "python benchmarks/claims.py --sections mae", "mode": "full", "threads": 2,
           "sections": {"mae": {"rows": rows("MAE", 0.6), "command": "mae run", "mode": "full", "threads": 2,
                                "created": "t1", "load_average": {"start": [1.0], "end": [1.5]}}}}
    paths = [tmp_path / "old.json", tmp_path / "new.json"]
    for path, record in zip(paths, (old, new), strict=True):
        path.write_text(json.dumps(record))
    assert claims.main(["--combine", *map(str, paths), "--out", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out" / "claims.json").read_text())
    assert record["sections_run"] == ["mae", "dino"]  # SECTIONS order
    assert "cmd" in record["sections_not_run"] and "mae" not in record["sections_not_run"]
    mae, dino = record["sections"]["mae"], record["sections"]["dino"]
    assert mae["rows"]["MAE"]["knn_top1"]["mean"] == pytest.approx(0.61)  # the later record's section
    assert (mae["command"], mae["mode"], mae["created"]) == ("mae run", "full", "t1")
    # claims are judged again from the rows: the old record's empty list becomes DINO's two claims
    assert [(c["method"], c["verdict"], c["method_beats_random"]) for c in dino["claims"]] == [
        ("DINO", "reproduces", True), ("DINO", "reproduces", True)]
    assert mae["load_average"] == {"start": [1.0], "end": [1.5]}
    assert (dino["command"], dino["mode"], dino["threads"], dino["created"]) == (old["command"], "reduced", 1, "t0")
    assert dino["load_average"] == {"start": [3.0], "end": [7.0]}
    assert record["combined_from"][0] == {"command": old["command"], "sections": ["dino", "mae"], "note": "stopped by hand"}
    with pytest.raises(SystemExit):
        claims.main(["--combine", str(tmp_path / "absent.json")])


@pytest.mark.slow
def test_quick_claims_two_sections(claims, tmp_path):
    assert claims.main(["--quick", "--sections", "mae", "dino", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "claims.json").read_text())
    assert {"command", "machine", "created", "seeds", "mode", "sections_run", "sections"} <= set(record)
    assert record["seeds"] == [0, 1] and record["mode"] == "quick" and record["sections_run"] == record["sections_requested"] == ["mae", "dino"]
    assert len(record["machine"]["load_average_start"]) == 3 and len(record["machine"]["load_average_end"]) == 3
    for name, method in (("mae", "MAE"), ("dino", "DINO")):
        section = record["sections"][name]
        assert section["budget"]["steps"] == claims.MNIST_QUICK.steps and section["budget"]["seeds"] == [0, 1]
        assert list(section["rows"]) == [method, claims.RANDOM, claims.PIXELS]
        assert section["command"] == record["command"] and section["mode"] == "quick" and section["threads"] == 1
        assert len(section["load_average"]["start"]) == 3 and len(section["load_average"]["end"]) == 3
        for row, scores in section["rows"].items():
            assert scores["n_val"] == {"samples": [claims.MNIST_QUICK.eval_limit]}
            for metric in ("knn_top1", "linear_top1"):
                score = scores[metric]
                assert 0.0 <= score["mean"] <= 1.0 and math.isfinite(score["ci95"]) and score["ci95"] >= 0
                assert score["n"] == (1 if row == claims.PIXELS else 2) == len(score["values"])
                assert score["mean"] == pytest.approx(sum(score["values"]) / score["n"])
        assert [(c["method"], c["baseline"], c["metric"]) for c in section["claims"]] == [
            (method, claims.RANDOM, "knn_top1"), (method, claims.RANDOM, "linear_top1")]
        for c in section["claims"]:
            assert c["verdict"] == claims.verdict((c["method_mean"], c["method_ci95"]),
                                                  (c["baseline_mean"], c["baseline_ci95"]))
