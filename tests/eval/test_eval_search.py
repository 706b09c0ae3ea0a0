"""Approximate faiss indexes: exact when they visit everything, recall measured against exact search,
bounded-memory building from memory-mapped banks, clear errors, and a light `import eval.knn`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.cli import main
from eval.knn import knn_rank
from eval.search import IndexSpec, build_index, exact_search, measured_recall, normalized, recall_at_k, search

torch.set_num_threads(1)
TINY = ["model.img_size=32", "model.patch_size=8", "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.weights=none"]


def _clustered(n: int, dim: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, dim, generator=generator)
    labels = torch.randint(0, 8, (n,), generator=generator)
    return centres[labels] + 0.5 * torch.randn(n, dim, generator=generator), labels


def test_ivf_visiting_every_list_is_exact_and_knn_agrees_with_flat():
    bank, labels = _clustered(600)
    queries, _ = _clustered(50, seed=1)
    flat = build_index(bank, normalize=True)
    ivf = build_index(bank, spec=IndexSpec("ivf", nlist=8, nprobe=8), normalize=True)
    assert ivf.nlist == 8 and ivf.nprobe == 8
    flat_scores, flat_ids = search(flat, normalized(queries), 10)
    ivf_scores, ivf_ids = search(ivf, normalized(queries), 10)
    np.testing.assert_array_equal(ivf_ids, flat_ids)
    np.testing.assert_allclose(ivf_scores, flat_scores, atol=1e-5)
    exact = knn_rank(bank, labels, queries, [5, 20], 8)
    approximate = knn_rank(bank, labels, queries, [5, 20], 8, index=ivf)
    for k in (5, 20):
        np.testing.assert_array_equal(approximate[k], exact[k])
    assert measured_recall(ivf, bank, queries, 10, 50, normalize=True)["recall@10"] == 1.0


def test_recall_of_approximate_indexes_is_measured_against_exact_search():
    bank, _ = _clustered(2000, dim=16)
    queries, _ = _clustered(200, dim=16, seed=1)
    _, exact = exact_search(bank, normalized(queries), 10, normalize=True, chunk_size=300)  # 7 chunks, merged
    np.testing.assert_array_equal(exact, search(build_index(bank, normalize=True), normalized(queries), 10)[1])
    for spec in (IndexSpec("ivf", nlist=16, nprobe=1), IndexSpec("ivfpq", nlist=16, nprobe=4, m=4, nbits=4), IndexSpec("hnsw", m=8, ef_search=16)):
        index = build_index(bank, spec=spec, normalize=True)
        record = measured_recall(index, bank, queries, 10, 100, normalize=True)
        _, found = search(index, normalized(queries), 10)
        assert record["recall_queries"] == 100 and 0.0 < record["recall@10"] <= 1.0, record
        assert 0.0 < recall_at_k(found, exact) < 1.0, spec  # approximate: some neighbours are missed
    assert recall_at_k(np.array([[1, 2, -1]]), np.array([[2, 3, 1]])) == pytest.approx(2 / 3)


def test_building_from_a_memory_map_in_chunks_equals_building_in_memory(tmp_path):
    bank, _ = _clustered(500)
    np.save(tmp_path / "bank.npy", bank.numpy())
    mapped = np.load(tmp_path / "bank.npy", mmap_mode="r")
    spec = IndexSpec("ivf", nlist=4, nprobe=2)
    queries = normalized(bank[:20])
    chunked = search(build_index(mapped, spec=spec, normalize=True, chunk_size=64), queries, 5)
    whole = search(build_index(bank, spec=spec, normalize=True), queries, 5)
    for a, b in zip(chunked, whole):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="m=32 must divide the feature dim 20"):
        build_index(torch.randn(100, 20), spec=IndexSpec("ivfpq"))


def test_knn_and_retrieve_record_the_index_and_its_recall(tmp_path, capsys):
    args = ["--backbone", "vit_tiny_patch16_224", "--data", "shapes", *TINY, "data.limit=60", "run.progress=false", f"run.cache_dir={tmp_path / 'cache'}"]
    assert main(["knn", *args, "--out", str(tmp_path / "flat"), "knn.ks=[5]", "knn.report_k=5"]) == 0
    assert main(["knn", *args, "--out", str(tmp_path / "ivf"), "knn.ks=[5]", "knn.report_k=5", "knn.index=ivf", "knn.nprobe=100"]) == 0
    flat, ivf = (json.loads((tmp_path / name / "knn-shapes.json").read_text()) for name in ("flat", "ivf"))
    assert ivf["details"]["index"]["type"] == "IndexIVFFlat" and ivf["details"]["index"]["recall_queries"] == 60
    assert ivf["metrics"]["index_recall@5"] == 1.0 and ivf["metrics"]["top1"] == flat["metrics"]["top1"]
    assert ivf["rows"][0]["queries"] == 60
    assert main(["retrieve", *args, "--out", str(tmp_path / "r"), "retrieve.index=hnsw", "retrieve.m=8"]) == 2
    assert "set retrieve.map_k" in capsys.readouterr().err
    assert main(["retrieve", *args, "--out", str(tmp_path / "r"), "retrieve.index=hnsw", "retrieve.m=8", "retrieve.map_k=20"]) == 0
    record = json.loads((tmp_path / "r" / "retrieve-shapes.json").read_text())
    assert record["details"]["index"]["type"] == "IndexHNSWFlat" and "index_recall@10" in record["metrics"]
    assert main(["knn", *args, "knn.index=annoy"]) == 2
    assert "knn.index=annoy is not one of" in capsys.readouterr().err


def test_importing_eval_knn_loads_neither_torchvision_sklearn_nor_timm():
    code = "import json, sys, eval.knn; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert {"torch", "faiss"} <= loaded and not loaded & {"torchvision", "sklearn", "timm", "lightly", "decord"}
