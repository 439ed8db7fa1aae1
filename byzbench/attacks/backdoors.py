"""Backdoors beyond the BadNets patch: a distributed trigger (dba), a blended trigger
(blended), and backdoor training whose update is shaped to persist (neurotoxin) or to stay
within a norm bound (pgd). All poison ``poison_fraction`` of the malicious clients' samples
with a trigger and the ``target`` label (:class:`~byzbench.attacks._trigger.TriggerAttack`),
and measure the ASR with the full trigger on the test samples whose label is not the target.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field

from byzbench.attacks._common import KnowledgeParams, malicious_mask, reference_rows
from byzbench.attacks._trigger import (
    Corner,
    PatchAttack,
    PatchParams,
    TriggerAttack,
    TriggerParams,
    image_size,
    place,
    plane_mask,
    rect_plane,
)
from byzbench.attacks.base import AttackContext
from byzbench.registry import ATTACKS

# -- dba ----------------------------------------------------------------------------------


class DBAParams(TriggerParams):
    parts: int = Field(4, ge=1, le=16,
                       description="local patterns the global trigger is split into, laid "
                                   "out two per row (the paper's 4)")
    height: int = Field(1, ge=1, le=64, description="height of each local pattern, pixels")
    width: int = Field(2, ge=1, le=64,
                       description="width of each local pattern, pixels (the paper's 1×4 "
                                   "bars on 28×28 MNIST, halved for the 8×8 digits)")
    gap: int = Field(1, ge=0, le=64, description="pixels between neighbouring local patterns")
    position: Corner | tuple[int, int] = Field(
        "bottom_right", description="corner of the image the global trigger sits in, or "
                                    "(row, col) of its top-left pixel")
    value: float | None = Field(
        None, description="pixel value of the trigger (every channel); default: the maximum "
                          "value of the malicious clients' training data (the brightest pixel)")


@ATTACKS.register("dba")
class DBA(TriggerAttack):
    """Distributed backdoor attack (Xie et al., ICLR 2020): the global trigger — ``parts``
    bars of ``height × width`` pixels, two per row, ``gap`` pixels apart — is split into its
    local patterns; the i-th malicious client (by client id) stamps only pattern i mod
    ``parts`` on ``poison_fraction`` of its samples, relabelled ``target``. The ASR is
    measured with the full global trigger. Called outside the engine (``poison_data``),
    every sample counts as the first malicious client's."""

    paper: ClassVar[str] = ("Xie, Huang, Chen, Li. DBA: Distributed Backdoor Attacks against "
                            "Federated Learning. ICLR 2020")
    Params: ClassVar[type[DBAParams]] = DBAParams

    def __init__(self, params: DBAParams | None = None) -> None:
        super().__init__(params)
        self._value: float | None = self.params.value

    def check_trigger(self, input_shape: tuple[int, ...]) -> None:
        self.local_masks(input_shape)

    def local_masks(self, input_shape: tuple[int, ...]) -> torch.Tensor:
        """``[parts, *input_shape]`` bool: the pixels of each local pattern."""
        p = self.params
        h, w = image_size(input_shape, "dba")
        rows, cols = math.ceil(p.parts / 2), min(p.parts, 2)
        box_h = rows * (p.height + p.gap) - p.gap
        box_w = cols * (p.width + p.gap) - p.gap
        r0, c0 = place(h, w, box_h, box_w, p.position, "dba")
        return torch.stack([
            plane_mask(rect_plane(h, w, [(r0 + (k // 2) * (p.height + p.gap),
                                          c0 + (k % 2) * (p.width + p.gap),
                                          p.height, p.width)]), input_shape)
            for k in range(p.parts)])

    def apply_trigger(self, x: torch.Tensor, owner: torch.Tensor | None = None
                      ) -> torch.Tensor:
        masks = self.local_masks(tuple(x.shape[1:])).to(x.device)
        if owner is None:
            mask = masks.any(dim=0).unsqueeze(0)
        else:
            mask = masks[owner.to(x.device).long() % self.params.parts]
        if self._value is None:
            self._value = float(x.max())  # fixed from the first data seen, reused at test time
        value = torch.tensor(self._value, dtype=x.dtype, device=x.device)
        return torch.where(mask, value, x)


# -- blended ------------------------------------------------------------------------------


class BlendedParams(TriggerParams):
    alpha: float = Field(0.2, gt=0.0, le=1.0,
                         description="blend weight α: x' = (1 − α)·x + α·pattern (the paper's "
                                     "0.2)")
    pattern: Literal["noise", "checkerboard"] = Field(
        "noise", description="noise: uniform random image (seeded by pattern_seed); "
                             "checkerboard: alternating pixels; both spanning the range "
                             "[min, max] of the malicious clients' training data")
    pattern_seed: int = Field(0, ge=0, description="seed of the noise pattern: a fixed key, "
                                                   "independent of the cell seed")


@ATTACKS.register("blended")
class Blended(TriggerAttack):
    """Blended injection (Chen et al. 2017): a key pattern (seeded uniform noise or a
    checkerboard, scaled to the data's [min, max]) is blended over the whole image,
    x' = (1 − α)·x + α·pattern, on ``poison_fraction`` of the malicious clients' samples,
    which are relabelled ``target``; the same blend makes the ASR test set."""

    paper: ClassVar[str] = ("Chen, Liu, Li, Lu, Song. Targeted Backdoor Attacks on Deep "
                            "Learning Systems Using Data Poisoning. arXiv 1712.05526, 2017")
    Params: ClassVar[type[BlendedParams]] = BlendedParams

    def __init__(self, params: BlendedParams | None = None) -> None:
        super().__init__(params)
        self._range: tuple[float, float] | None = None

    def check_trigger(self, input_shape: tuple[int, ...]) -> None:
        if self.params.pattern == "checkerboard":
            image_size(input_shape, "blended")

    def key(self, input_shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
        """The pattern for samples of ``input_shape``, with values in [low, high]."""
        shape = tuple(int(s) for s in input_shape)
        if self.params.pattern == "noise":
            g = torch.Generator().manual_seed(self.params.pattern_seed)
            unit = torch.rand(shape, generator=g)
        else:
            h, w = image_size(shape, "blended")
            grid = (torch.arange(h).unsqueeze(1) + torch.arange(w).unsqueeze(0)) % 2 == 0
            unit = plane_mask(grid, shape).float()
        return low + (high - low) * unit

    def apply_trigger(self, x: torch.Tensor, owner: torch.Tensor | None = None
                      ) -> torch.Tensor:
        if self._range is None:  # fixed from the first data seen, reused at test time
            self._range = (float(x.min()), float(x.max()))
        key = self.key(tuple(x.shape[1:]), *self._range).to(device=x.device, dtype=x.dtype)
        a = self.params.alpha
        return (1.0 - a) * x + a * key.unsqueeze(0)


# -- neurotoxin ---------------------------------------------------------------------------


class NeurotoxinParams(PatchParams, KnowledgeParams):
    top_k_percent: float = Field(
        1.0, gt=0.0, lt=100.0,
        description="percentage of coordinates removed from the malicious update: those "
                    "the benign estimate changes most in magnitude (1 = BackFed's mask "
                    "ratio 0.99)")
    estimate: Literal["global", "reference"] = Field(
        "global", description="benign estimate: global = the previous global update "
                              "θ_t − θ_(t−1) the attacker observed (the paper; its first "
                              "active round falls back to reference); reference = the mean "
                              "of the reference rows of the round (knowledge)")


@ATTACKS.register("neurotoxin")
class Neurotoxin(PatchAttack):
    """Neurotoxin (Zhang et al., ICML 2022): BadNets backdoor training whose malicious update
    is projected onto the coordinates benign training changes least — the ``top_k_percent``
    coordinates largest in magnitude in the benign estimate (the previous global update,
    or the mean of the reference rows) are zeroed. The projection is applied once to the
    update after local training (the vectorized trainer has no per-client gradient hook),
    not to every step's gradient as in the paper."""

    paper: ClassVar[str] = ("Zhang, Panda, Song, Yang, Mahoney, Gonzalez, Ramchandran, "
                            "Mittal. Neurotoxin: Durable Backdoors in Federated Learning. "
                            "ICML 2022")
    Params: ClassVar[type[NeurotoxinParams]] = NeurotoxinParams

    def __init__(self, params: NeurotoxinParams | None = None) -> None:
        super().__init__(params)
        self._previous: torch.Tensor | None = None

    def benign_estimate(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        """``[d]``: the previous global update (estimate global, from the second round the
        attack sees on), else the mean of the reference rows."""
        theta = ctx.global_params
        estimate = None
        if self.params.estimate == "global" and theta is not None:
            if self._previous is not None and self._previous.shape == theta.shape:
                estimate = (theta - self._previous.to(theta.device)).to(updates)
            self._previous = theta.detach().clone()
        if estimate is None:
            estimate = reference_rows(updates, ctx).mean(dim=0)
        return estimate

    def keep_mask(self, estimate: torch.Tensor) -> torch.Tensor:
        """``[d]`` float: 0 on the ⌈top_k_percent/100 · d⌉ coordinates largest in |estimate|
        (ties broken by torch.topk), 1 elsewhere."""
        d = estimate.numel()
        k = min(d, math.ceil(self.params.top_k_percent / 100.0 * d))
        keep = torch.ones(d, dtype=estimate.dtype, device=estimate.device)
        keep[torch.topk(estimate.abs(), k).indices] = 0.0
        return keep

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        keep = self.keep_mask(self.benign_estimate(updates, ctx))
        mal = malicious_mask(ctx, updates.device)
        return torch.where(mal.unsqueeze(1), updates * keep.unsqueeze(0), updates)


# -- pgd / constrain-and-scale --------------------------------------------------------------


class PGDParams(PatchParams, KnowledgeParams):
    eps: float | None = Field(
        None, gt=0.0, description="radius of the L2 ball around the global model the "
                                  "malicious model must stay in (‖Δ‖ ≤ eps); default: the "
                                  "median norm of the round's reference rows (knowledge)")
    scale: float = Field(1.0, gt=0.0, le=1e6,
                         description="the projected update is multiplied by this factor "
                                     "(constrain-and-scale); 1 = pure projection")


@ATTACKS.register("pgd")
class PGD(PatchAttack):
    """PGD / constrain-and-scale backdoor (Sun et al. 2019; Wang et al., NeurIPS 2020;
    Bagdasaryan et al., AISTATS 2020): BadNets backdoor training whose malicious model is
    projected onto the L2 ball of radius ``eps`` around the global model, Δ ← Δ·min(1,
    eps/‖Δ‖), then scaled by ``scale``. The projection is applied once to the update
    after local training (the vectorized trainer has no per-client step hook), not after
    every step as in the papers' projected gradient descent."""

    paper: ClassVar[str] = ("Sun, Kairouz, Suresh, McMahan. Can You Really Backdoor Federated "
                            "Learning? arXiv 1911.07963, 2019; Wang, Sreenivasan, Rajput, "
                            "Vishwakarma, Agarwal, Sohn, Lee, Papailiopoulos. Attack of the "
                            "Tails: Yes, You Really Can Backdoor Federated Learning. NeurIPS "
                            "2020; Bagdasaryan, Veit, Hua, Estrin, Shmatikov. How To Backdoor "
                            "Federated Learning. AISTATS 2020")
    Params: ClassVar[type[PGDParams]] = PGDParams

    def radius(self, updates: torch.Tensor, ctx: AttackContext) -> float:
        """``eps``, or the median L2 norm of the reference rows."""
        if self.params.eps is not None:
            return float(self.params.eps)
        return float(torch.quantile(reference_rows(updates, ctx).norm(dim=1), 0.5))

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        eps = self.radius(updates, ctx)
        norms = updates.norm(dim=1, keepdim=True)
        factor = torch.clamp(eps / norms.clamp_min(1e-12), max=1.0) * self.params.scale
        mal = malicious_mask(ctx, updates.device)
        return torch.where(mal.unsqueeze(1), updates * factor, updates)
