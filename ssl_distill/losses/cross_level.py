"""Cross-level multi-instance distillation (CMD: Bi et al., "Cross-level Multi-instance Distillation for
Self-supervised Fine-grained Visual Categorization", IEEE TIP 2025, arXiv 2401.08860).

Official code: github.com/BiQiWHU/CMD, `main_esvit.py`, `DDINOLoss.forward` (the block `### ours md ###`),
an EsViT (Li et al. 2022) loss with one added term. For every teacher global view t and student view
v != t:

- intra-level, image <-> image: `CE(p_t, softmax(s_v / τ_s))` on the view-level head (DINO's term);
- intra-level, region <-> region (EsViT): each student patch i of view v is matched to the teacher patch
  j* = argmax_j cos(f^s_{v,i}, f^t_{t,j}) of *backbone* features, and `CE(p^region_{t,j*},
  softmax(s^region_{v,i} / τ_s))` is averaged over the student patches;
- inter-level, multi-instance (`md`): the patches of a crop are a bag, the bag prediction is the sum of
  the patch (instance) predictions, and it is compared with the image (view) prediction, on the
  teacher side (no gradient) and on the student side.

The per-pair loss is `view_weight * view + region_weight * region` (0.5 / 0.5), averaged over pairs,
plus `md_weight * (sum of md over pairs) / pairs` (1.0).

The md term as released is `F.kl_div(input, target)` with non-log-probability inputs and un-normalised
bag sums as targets (scaled student *logits* on the student side), whose value depends on the PyTorch
version: up to 1.9 `where(target > 0, target * (log target - input), 0)` averaged over all B * K
elements, on recent PyTorch `xlogy(target, target) - target * input`, NaN for negative targets. Two
explicit modes:

- `official_legacy`: the masked formula the released code computed on torch 1.9, written out (finite on
  every PyTorch). Not a divergence: it can be negative and is unbounded below in the student's view
  logits wherever the bag logits are positive.
- `normalized` (default): a proper KL(bag || view) between the normalised bag (the mean of the patch
  probabilities) and the view distribution, summed over classes and averaged over the batch, on the
  student's softmax(· / τ_s). It is >= 0 and zero exactly when the image prediction equals the bag's,
  which is the consistency the paper's multi-instance term asks for, and it cannot drive the logits to
  grow without bound. The teacher-side term carries no gradient; in this mode it is reported
  (`md_teacher`) but not added: on sharpened teacher probabilities (τ_t = 0.04) the view distribution
  underflows and the constant would swamp the loss curve without changing any gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_distill.losses.self_distillation import SelfDistillationLoss

MD_MODES = ("official_legacy", "normalized")


@torch.no_grad()
def match_patches(student_feats: Tensor, teacher_feats: Tensor) -> Tensor:
    """student_feats (B, Ns, D), teacher_feats (B, Nt, D) backbone features -> (B, Ns) index of each
    student patch's most similar teacher patch by cosine (EsViT's `region_sim_ind`)."""
    similarity = F.normalize(student_feats.float(), dim=-1) @ F.normalize(teacher_feats.float(), dim=-1).transpose(1, 2)
    return similarity.argmax(dim=2)


def region_cross_entropy(
    teacher_probs: Tensor, teacher_feats: Tensor, student_logits: Tensor, student_feats: Tensor, student_temp: float
) -> Tensor:
    """Region <-> region term of one (teacher view, student view) pair -> scalar mean over patches and batch.

    teacher_probs (B, Nt, K) centred and sharpened region probabilities; teacher_feats (B, Nt, D);
    student_logits (B, Ns, K) raw region-head outputs; student_feats (B, Ns, D)."""
    index = match_patches(student_feats, teacher_feats)
    return matched_cross_entropy(teacher_probs, index, F.log_softmax(student_logits.float() / student_temp, dim=-1))


def matched_cross_entropy(teacher_probs: Tensor, index: Tensor, log_students: Tensor) -> Tensor:
    """teacher_probs (B, Nt, K), index (B, Ns) matched teacher patch of each student patch, log_students
    (B, Ns, K) student region log-probabilities -> scalar cross-entropy, mean over patches and batch."""
    targets = torch.gather(teacher_probs.detach(), 1, index.unsqueeze(-1).expand(-1, -1, teacher_probs.shape[-1]))
    return -(targets * log_students).sum(-1).mean()


def legacy_kl_div(input: Tensor, target: Tensor) -> Tensor:
    """`F.kl_div(input, target)` (reduction 'mean') as torch <= 1.9 computed it: the mean over all
    elements of `where(target > 0, target * (log target - input), 0)`. The inner `where` keeps the log
    (and its gradient) finite where target <= 0."""
    positive = target > 0
    safe = torch.where(positive, target, torch.ones_like(target))
    return torch.where(positive, target * (torch.log(safe) - input), torch.zeros_like(target)).mean()


def multi_instance_divergence(view: Tensor, instances: Tensor, mode: str, student_temp: float | None = None) -> Tensor:
    """The md term for one crop: image prediction vs the bag of its patch predictions -> scalar.

    Teacher side (`student_temp` None): view (B, K) and instances (B, N, K) are sharpened probabilities.
    Student side: view (B, K) and instances (B, N, K) are raw head logits, scaled by 1 / student_temp.
    `official_legacy`: legacy_kl_div(view, sum of instances) on those tensors (scaled logits for the
    student). `normalized`: KL(mean of instance probabilities || view probabilities), batch mean."""
    if mode not in MD_MODES:
        raise ValueError(f"md_mode must be one of {MD_MODES}, got '{mode}'")
    view, instances = view.float(), instances.float()
    if student_temp is not None:
        view, instances = view / student_temp, instances / student_temp
    if mode == "official_legacy":
        return legacy_kl_div(view, instances.sum(1))
    if student_temp is None:
        log_view, bag = torch.log(view.clamp_min(1e-30)), instances.mean(1)
    else:
        log_view, bag = F.log_softmax(view, dim=-1), F.softmax(instances, dim=-1).mean(1)
    return (bag * (torch.log(bag.clamp_min(1e-30)) - log_view)).sum(-1).mean()


@dataclass
class CrossLevelTerms:
    """loss = view_weight * view + region_weight * region + md_weight * md (each a pair mean); md holds
    the teacher side only in `official_legacy`; md_teacher is the teacher side alone (no gradient)."""

    loss: Tensor
    view: Tensor
    region: Tensor
    md: Tensor
    md_teacher: Tensor


class CrossLevelDistillationLoss(nn.Module):
    """CMD's objective (`DDINOLoss` with md) over 2 teacher views and V student views.

    teacher_view_probs (2, B, K) and teacher_region_probs (2, B, Nt, K): centred, sharpened teacher
    outputs; teacher_feats (2, B, Nt, D) teacher backbone patch tokens. Student lists of V (the teacher
    views first): view_logits (B, K), region_logits (B, Ns_v, K), feats (B, Ns_v, D); Ns_v differs by
    crop resolution. Pairs: every teacher view t with every student view v != t.
    """

    def __init__(
        self,
        student_temp: float = 0.1,
        view_weight: float = 0.5,
        region_weight: float = 0.5,
        md_weight: float = 1.0,
        md_mode: str = "normalized",
    ) -> None:
        super().__init__()
        if md_mode not in MD_MODES:
            raise ValueError(f"md_mode must be one of {MD_MODES}, got '{md_mode}'")
        self.student_temp, self.md_mode = student_temp, md_mode
        self.view_weight, self.region_weight, self.md_weight = view_weight, region_weight, md_weight
        self.view_loss = SelfDistillationLoss(student_temp, skip_same_view=True)

    def forward(
        self,
        teacher_view_probs: Tensor,
        teacher_region_probs: Tensor,
        teacher_feats: Tensor,
        view_logits: list[Tensor],
        region_logits: list[Tensor],
        feats: list[Tensor],
    ) -> CrossLevelTerms:
        view = self.view_loss(teacher_view_probs, torch.stack(view_logits))
        teacher_md = [multi_instance_divergence(p, r, self.md_mode) for p, r in zip(teacher_view_probs, teacher_region_probs)]
        student_md = [
            multi_instance_divergence(s, r, self.md_mode, self.student_temp) for s, r in zip(view_logits, region_logits)
        ]
        # each view's unit features and region log-probabilities once, not once per pair (region_cross_entropy's terms)
        with torch.no_grad():
            unit_teacher = [F.normalize(f.float(), dim=-1).transpose(1, 2) for f in teacher_feats]
            unit_student = [F.normalize(f.float(), dim=-1) for f in feats]
        log_students = [F.log_softmax(r.float() / self.student_temp, dim=-1) for r in region_logits]
        region, md_student, md_teacher, pairs = view.new_zeros(()), view.new_zeros(()), view.new_zeros(()), 0
        for t in range(len(teacher_view_probs)):
            for v in range(len(view_logits)):
                if v == t:
                    continue
                index = (unit_student[v] @ unit_teacher[t]).argmax(dim=2)  # match_patches
                region = region + matched_cross_entropy(teacher_region_probs[t], index, log_students[v])
                md_student, md_teacher = md_student + student_md[v], md_teacher + teacher_md[t]
                pairs += 1
        region, md_student, md_teacher = region / pairs, md_student / pairs, md_teacher / pairs
        md = md_student + md_teacher if self.md_mode == "official_legacy" else md_student
        loss = self.view_weight * view + self.region_weight * region + self.md_weight * md
        return CrossLevelTerms(loss, view, region, md, md_teacher.detach())
