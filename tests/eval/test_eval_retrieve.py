import numpy as np
import pytest
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


def released_cmd_retrieval(train, train_labels, test, test_labels, every=9, at_map=100):
    """The loop of CMD's retrieval.py (split_mode='ratio'), on L2-normalised features."""
    feats, labels = np.concatenate([train, test]), np.concatenate([train_labels, test_labels])
    query = {len(train) + i for i in range(len(test)) if i % every == 0}
    q = [i for i in range(len(labels)) if i in query]
    g = [i for i in range(len(labels)) if i not in query]
    rank1 = rank5 = average = 0.0
    for i in q:
        order = np.argsort(feats[i] @ feats[g].T)[::-1]
        ranked = labels[g][order]
        rank1 += ranked[0] == labels[i]
        rank5 += (ranked[:5] == labels[i]).any()
        hits = np.flatnonzero(ranked[:at_map] == labels[i])
        average += np.mean([(n + 1) / (j + 1) for n, j in enumerate(hits)]) if len(hits) else 0.0
    return rank1 / len(q), rank5 / len(q), average / len(q), len(q), len(g)


def test_cmd_protocol_matches_the_released_retrieval_script():
    from eval.extract import Features
    from eval.retrieve import cmd_holdout

    rng = np.random.default_rng(0)
    def features(n):
        feats = torch.as_tensor(normalized(rng.normal(size=(n, 6))))
        return Features(feats, torch.as_tensor(rng.integers(0, 12, n)), torch.zeros(n), None, (1,), ())
    train, test = features(150), features(40)
    queries, gallery = cmd_holdout(test, train, 9)
    assert len(queries) == 5 and len(gallery) == 185 and torch.equal(queries.feats[1], test.feats[9])
    ours = retrieve(build_index(normalized(gallery.feats)), gallery.labels.numpy(), queries.feats, queries.labels.numpy(),
                    ks=(1, 5), map_k=100, ap_over="retrieved")
    rank1, rank5, average, n_queries, n_gallery = released_cmd_retrieval(
        train.feats.numpy(), train.labels.numpy(), test.feats.numpy(), test.labels.numpy()
    )
    assert (n_queries, n_gallery) == (5, 185)
    assert ours["recall@1"] == pytest.approx(rank1) and ours["recall@5"] == pytest.approx(rank5)
    assert ours["map@100"] == pytest.approx(average, abs=1e-9)


def test_retrieved_ap_divides_by_hits_in_the_ranked_depth_and_is_zero_without_any():
    scores = ranking_metrics(np.array([[3, 0, 3], [1, 1, 1]]), np.array([3, 3]), np.array([9, 9]), ks=(1,), ap_over="retrieved")
    np.testing.assert_allclose(scores["ap"], [(1 + 2 / 3) / 2, 0.0])
