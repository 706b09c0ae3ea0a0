"""An image classifier on a token encoder: pooling and a linear head, optionally with a distillation token
and its own head (DeiT; G2SD's specific stage)."""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn

POOLS = ("cls", "avg")


class Classifier(nn.Module):
    """images (B, C, H, W) -> logits (B, num_classes).

    pool `cls`: the class token after the encoder's final norm (timm's `global_pool='token'`; G2SD's
    students). `avg`: the final norm applied to the mean of the pre-norm patch tokens (MAE fine-tuning's
    `global_pool`, official `models_vit.py`; the encoder's own final norm plays MAE's `fc_norm`, so every
    parameter is used and the exported encoder is the one that was trained).

    The head starts at trunc-normal std `head_init_std` (MAE's 2e-5), zero bias. With
    `distillation_token`, a learned token is appended after the patch tokens with no position embedding
    (G2SD `G2SD/models_vit.py`; DeiT places it second with a position of its own) and read, after the final
    norm, by `head_dist` (timm's init, std 0.02). In training the forward returns (class logits,
    distillation logits); in eval mode their mean (G2SD's inference).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        pool: str = "cls",
        distillation_token: bool = False,
        head_init_std: float = 2e-5,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got '{pool}'")
        self.backbone, self.pool = backbone, pool
        dim = backbone.embed_dim
        self.head = nn.Linear(dim, num_classes)
        trunc_normal_(self.head.weight, std=head_init_std)
        nn.init.zeros_(self.head.bias)
        self.dist_token = self.head_dist = None
        if distillation_token:
            self.dist_token = nn.Parameter(trunc_normal_(torch.zeros(1, 1, dim), std=0.02))
            self.head_dist = nn.Linear(dim, num_classes)
            trunc_normal_(self.head_dist.weight, std=0.02)
            nn.init.zeros_(self.head_dist.bias)

    def no_weight_decay(self) -> set[str]:
        return {"dist_token"} if self.dist_token is not None else set()

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        encoder = self.backbone
        tokens = encoder.embed(images)  # (B, 1 + L, D) with positions
        if self.dist_token is not None:
            tokens = torch.cat([tokens, self.dist_token.expand(len(tokens), -1, -1)], dim=1)
        tokens, _ = encoder.run_blocks(tokens)
        norm = encoder.final_norm()
        if self.pool == "cls":
            pooled = norm(tokens[:, 0])
        else:
            prefix = encoder.num_prefix_tokens
            pooled = norm(tokens[:, prefix : prefix + encoder.num_patches].mean(dim=1))
        logits = self.head(pooled)
        if self.head_dist is None:
            return logits
        distilled = self.head_dist(norm(tokens[:, -1]))
        return (logits, distilled) if self.training else (logits + distilled) / 2
