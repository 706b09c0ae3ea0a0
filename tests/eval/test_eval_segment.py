import torch
from torch.nn import functional as F

from eval.segment import predict_masks, segmentation_metrics, train_segmentation_head


def test_segmentation_metrics_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    prediction = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]])
    scores = segmentation_metrics(prediction, target, num_classes=3, ignore_index=255)
    # class 0: tp 1, fp 1, fn 1; class 1: tp 3, fp 1, fn 0; class 2: tp 1, fp 0, fn 1 (255 ignored)
    assert scores["iou"] == [1 / 3, 3 / 4, 1 / 2]
    assert scores["dice"] == [2 / 4, 6 / 7, 2 / 3]
    assert abs(scores["miou"] - (1 / 3 + 3 / 4 + 1 / 2) / 3) < 1e-12
    assert scores["pixel_accuracy"] == 5 / 7


def _patch_data(n: int, informative: bool, seed: int):
    generator = torch.Generator().manual_seed(seed)
    patch_labels = torch.randint(0, 3, (n, 4, 4), generator=generator)
    masks = F.interpolate(patch_labels[:, None].float(), scale_factor=4, mode="nearest")[:, 0].long()
    embedding = torch.randn(3, 16, generator=generator)
    noise = 0.2 * torch.randn(n, 16, 16, generator=generator)
    tokens = (
        embedding[patch_labels.flatten(1)] + noise
        if informative
        else torch.randn(n, 16, 16, generator=generator)
    )
    return tokens.half(), masks  # (N, 16 tokens, 16 dims), (N, 16, 16)


def test_linear_head_segments_features_that_encode_the_mask():
    tokens, masks = _patch_data(240, informative=True, seed=0)
    head = train_segmentation_head(tokens[:160], masks[:160], (4, 4), 3, epochs=8, lr=2e-2, batch_size=40)
    scores = segmentation_metrics(predict_masks(head, tokens[160:], (4, 4), (16, 16)), masks[160:], 3)
    assert scores["miou"] > 0.85


def test_linear_head_is_near_chance_on_noise():
    tokens, masks = _patch_data(240, informative=False, seed=1)
    head = train_segmentation_head(tokens[:160], masks[:160], (4, 4), 3, epochs=8, lr=2e-2, batch_size=40)
    scores = segmentation_metrics(predict_masks(head, tokens[160:], (4, 4), (16, 16)), masks[160:], 3)
    assert scores["miou"] < 0.4
