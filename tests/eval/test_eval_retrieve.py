import numpy as np
import torch

from eval.retrieve import ranking_metrics, retrieve
from eval.search import build_index, load_index, normalized, save_index, search

GALLERY = torch.tensor([[1.0, 0.1], [1.0, 0.3], [0.0, 1.0], [1.0, -0.5]])
GALLERY_LABELS = np.array([1, 0, 0, 1])
QUERIES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
QUERY_LABELS = np.array([0, 1])


def test_recall_and_map_by_hand():
    index = build_index(normalized(GALLERY))
    # query 0 ranks the gallery 0, 1, 3, 2 -> hits 0 1 0 1: AP = (1/2 + 2/4) / 2 = 0.5
    # query 1 ranks the gallery 2, 1, 0, 3 -> hits 0 0 1 1: AP = (1/3 + 2/4) / 2 = 5/12
    metrics = retrieve(index, GALLERY_LABELS, QUERIES, QUERY_LABELS, ks=(1, 2, 3))
    assert metrics["recall@1"] == 0.0
    assert metrics["recall@2"] == 0.5
    assert metrics["recall@3"] == 1.0
    assert abs(metrics["map"] - (0.5 + 5 / 12) / 2) < 1e-9
    # truncated at depth 2: query 0 -> (1/2) / 2, query 1 -> 0
    assert (
        abs(retrieve(index, GALLERY_LABELS, QUERIES, QUERY_LABELS, ks=(1,), map_k=2)["map@2"] - 0.125) < 1e-9
    )


def test_truncated_ap_divides_by_the_ranked_depth():
    # 5 relevant items in the gallery, 2 ranked, both relevant: AP@2 = (1/1 + 2/2) / min(5, 2) = 1
    scores = ranking_metrics(np.array([[3, 3], [3, 0]]), np.array([3, 3]), np.array([5, 1]), ks=(1,))
    np.testing.assert_allclose(scores["ap"], [1.0, 1.0])
    np.testing.assert_array_equal(scores["recall@1"], [1.0, 1.0])


def test_index_save_and_reload(tmp_path):
    rng = np.random.default_rng(0)
    gallery, queries = normalized(rng.normal(size=(50, 8))), normalized(rng.normal(size=(5, 8)))
    index = build_index(gallery)
    path = save_index(index, tmp_path / "gallery.faiss")
    reloaded = load_index(path)
    assert reloaded.ntotal == 50
    for a, b in zip(search(index, queries, 7), search(reloaded, queries, 7)):
        np.testing.assert_array_equal(a, b)
