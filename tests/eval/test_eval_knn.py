import math

import numpy as np
import pytest
import torch

from eval.knn import knn_rank, weighted_vote
from eval.search import build_index, normalized, search


def test_weighted_vote_by_hand():
    # query 0: neighbours with sims 1.0 (label 0) and 0.5 (label 2); query 1: all three neighbours agree
    sims = torch.tensor([[1.0, 0.5, 0.2], [0.9, 0.8, 0.7]])
    labels = torch.tensor([[0, 2, 2], [1, 1, 1]])
    scores = weighted_vote(sims, labels, num_classes=3, temperature=0.1)
    w = [math.exp(1.0 / 0.1), math.exp(0.5 / 0.1), math.exp(0.2 / 0.1)]
    expected = torch.tensor([[w[0], 0.0, w[1] + w[2]], [0.0, 1.0, 0.0]], dtype=torch.float64)
    expected[0] /= sum(w)
    torch.testing.assert_close(scores, expected)


def test_weighted_vote_is_not_a_majority_vote():
    # one close neighbour of class 0 beats two far ones of class 1 at T=0.07, loses at T=10
    sims = torch.tensor([[0.99, 0.5, 0.5]])
    labels = torch.tensor([[0, 1, 1]])
    assert weighted_vote(sims, labels, 2, 0.07).argmax().item() == 0
    assert weighted_vote(sims, labels, 2, 10.0).argmax().item() == 1
    # tiny temperatures do not overflow
    assert torch.isfinite(weighted_vote(sims, labels, 2, 0.001)).all()


def test_knn_rank_tiny_case():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    bank_labels = torch.tensor([0, 1, 1, 0])
    queries = torch.tensor([[2.0, 0.1], [0.1, 3.0]])
    # query 0 sims: 0.999 (label 0), 0.741 (1), 0.050 (1), -0.999 (0); query 1: 0.999 (label 1) first
    ranked = knn_rank(bank, bank_labels, queries, ks=[1, 4, 50], num_classes=2, temperature=0.07)
    assert sorted(ranked) == [1, 4]  # k=50 clipped to the bank size
    assert ranked[1][:, 0].tolist() == [0, 1]
    assert ranked[4][:, 0].tolist() == [0, 1]


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_faiss_search_equals_brute_force(metric):
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(300, 24, generator=generator)
    queries = torch.randn(37, 24, generator=generator)
    bank_n, queries_n = normalized(bank), normalized(queries)
    scores, ids = search(build_index(bank_n, metric), queries_n, k=10, chunk_size=8)
    if metric == "ip":
        expected = torch.topk(torch.from_numpy(queries_n) @ torch.from_numpy(bank_n).T, 10, dim=1)
        expected_scores = expected.values
    else:
        distances = torch.cdist(torch.from_numpy(queries_n).double(), torch.from_numpy(bank_n).double()) ** 2
        expected = torch.topk(distances, 10, dim=1, largest=False)
        expected_scores = expected.values.float()
    np.testing.assert_array_equal(ids, expected.indices.numpy())
    np.testing.assert_allclose(scores, expected_scores.numpy(), atol=1e-5)
