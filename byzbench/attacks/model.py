"""Model-poisoning attacks: the malicious clients replace their update rows.

Every hook gets the round's ``[n, d]`` update matrix; the engine keeps only the rows in
``ctx.malicious``. Benign statistics (mean, std, pairwise distances) come only from the
rows in ``ctx.reference``: the honest rows under ``knowledge: full``, the malicious
clients' own honestly-computed updates under ``knowledge: partial``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from statistics import NormalDist
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from byzbench.attacks._common import (
    ColludeParams,
    KnowledgeParams,
    column_std,
    malicious_mask,
    own_rows,
    put_rows,
    rand,
    randn,
    reference_rows,
)
from byzbench.attacks.base import Attack, AttackContext, AttackParams, Stage
from byzbench.registry import ATTACKS

# ---------------------------------------------------------------------------- simple ones


class SignFlipParams(KnowledgeParams, ColludeParams):
    reference: Literal["own", "mean"] = Field(
        "own", description="own: send -(own honest update); mean: send -mean(benign reference)")
    factor: float = Field(1.0, gt=0.0, le=1e6,
                          description="magnitude: the update sent is -factor × reference")


@ATTACKS.register("sign_flip")
class SignFlip(Attack):
    """Sign flipping (Li et al., AAAI 2019, RSA): each malicious client sends −Δ_i, its own
    honest update negated; ``reference: mean`` sends −mean(benign reference rows)."""

    stage: ClassVar[Stage] = "update"
    paper: ClassVar[str] = ("Li, Xu, Chen, Giannakis, Ling. RSA: Byzantine-Robust Stochastic "
                            "Aggregation Methods for Distributed Learning from Heterogeneous "
                            "Datasets. AAAI 2019")
    Params: ClassVar[type[SignFlipParams]] = SignFlipParams
    strength: ClassVar[str | None] = "factor"

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        p = self.params
        mal = malicious_mask(ctx, updates.device)
        if p.reference == "mean":
            base = reference_rows(updates, ctx).mean(dim=0)
        else:
            base = own_rows(updates, mal, p.collude)
        return put_rows(updates, mal, -p.factor * base)


class ScalingParams(ColludeParams):
    factor: float | None = Field(
        None, gt=0.0, le=1e9,
        description="multiplier of the own update; default: the number of clients")


@ATTACKS.register("scaling")
class Scaling(Attack):
    """Update scaling: each malicious client sends its own honest update × ``factor``
    (default: the number of clients) — the boosting step of model replacement (Bagdasaryan
    et al., AISTATS 2020; Bhagoji et al., ICML 2019) without a backdoor objective, i.e. a
    pure magnitude attack. Not FLTrust's "Scaling attack", which also stamps a trigger on
    the data: that one is ``{name: backdoor, boost: <n>}``."""

    stage: ClassVar[Stage] = "update"
    paper: ClassVar[str] = ("Bagdasaryan, Veit, Hua, Estrin, Shmatikov. How To Backdoor "
                            "Federated Learning. AISTATS 2020 (its boosting step, applied to "
                            "an honest update)")
    Params: ClassVar[type[ScalingParams]] = ScalingParams
    strength: ClassVar[str | None] = "factor"

    def plain_strength(self, ctx: AttackContext) -> float:
        return self.scale(ctx)

    def scale(self, ctx: AttackContext) -> float:
        if self.params.factor is not None:
            return self.params.factor
        cell = getattr(self, "cell", None)
        return float(cell.num_clients if cell is not None else ctx.n)

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        mal = malicious_mask(ctx, updates.device)
        return put_rows(updates, mal, self.scale(ctx) * own_rows(updates, mal,
                                                                   self.params.collude))


class GaussianParams(ColludeParams):
    sigma: float = Field(200.0, ge=0.0, le=1e9, description="standard deviation of the noise")
    mode: Literal["replace", "additive"] = Field(
        "replace", description="replace: send N(0, sigma²) noise; additive: own update + noise")


@ATTACKS.register("gaussian")
class Gaussian(Attack):
    """Gaussian Byzantine vectors (Blanchard et al., NeurIPS 2017, σ = 200): each malicious
    update is replaced by N(0, σ²I) noise, or (``mode: additive``) the noise is added to it.
    With ``collude`` all malicious clients share one draw."""

    stage: ClassVar[Stage] = "update"
    paper: ClassVar[str] = ("Blanchard, El Mhamdi, Guerraoui, Stainer. Machine Learning with "
                            "Adversaries: Byzantine Tolerant Gradient Descent. NeurIPS 2017")
    Params: ClassVar[type[GaussianParams]] = GaussianParams
    strength: ClassVar[str | None] = "sigma"

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        p = self.params
        mal = malicious_mask(ctx, updates.device)
        n, d = updates.shape
        noise = randn((1, d) if p.collude else (n, d), ctx.generator, updates) * p.sigma
        if p.mode == "replace":
            return put_rows(updates, mal, noise.expand(n, d))
        return put_rows(updates, mal, own_rows(updates, mal, p.collude) + noise)


# ------------------------------------------------------------------- statistical attacks


def halving_search(ok: Callable[[float], bool], gamma_init: float, grow: bool,
                   max_steps: int, tolerance: float) -> float:
    """The largest γ that ``ok`` accepts, by the min-max/min-sum authors' search
    (Shejwalkar & Houmansadr, NDSS 2021): optionally double γ while accepted, then step up
    on success and down on failure, halving the step, until the last accepted γ is within
    ``tolerance`` (relative) or ``max_steps`` steps are spent; 0.0 if none was accepted."""
    gamma, steps = gamma_init, 0
    if grow:
        while ok(gamma) and steps < max_steps and math.isfinite(gamma * 2):
            gamma, steps = gamma * 2, steps + 1
    step, good = gamma, 0.0
    while steps < max_steps:
        if ok(gamma):
            good = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
        steps += 1
        if good > 0 and abs(good - gamma) <= tolerance * good:
            break
    return good


@lru_cache(maxsize=1024)  # called every round with the same (n, f)
def alie_z(n: int, f: int) -> float:
    """Baruch et al.'s z_max: s = ⌊n/2 + 1⌋ − f supporters needed, z = Φ⁻¹((n − s)/n).

    ``s`` is clamped to [1, n − 1] so z stays finite when f ≥ n/2 (the paper assumes
    f < n/2) and is 0 at least when no supporters are missing."""
    if n < 2:
        return 0.0
    s = math.floor(n / 2 + 1) - f
    s = min(max(s, 1), n - 1)
    return NormalDist().inv_cdf((n - s) / n)


class ALIEParams(KnowledgeParams):
    z: float | None = Field(
        None, ge=0.0, le=100.0,
        description="deviation in standard deviations; default: the paper's z_max from n, f")
    direction: Literal["minus", "plus"] = Field(
        "minus", description="send mean - z·std (minus, as in the paper's description) or "
                             "mean + z·std (plus, as in some public implementations)")
    unbiased: bool = Field(
        True, description="sample std (n-1, torch.std) instead of population std (n)")


@ATTACKS.register("alie")
class ALIE(Attack):
    """A Little Is Enough (Baruch et al., NeurIPS 2019): all malicious clients send
    μ − z·σ (per coordinate, over the benign reference rows), z = Φ⁻¹((n−s)/n) with
    s = ⌊n/2+1⌋ − f unless ``z`` is given. Always collusive (one vector)."""

    stage: ClassVar[Stage] = "update"
    paper: ClassVar[str] = ("Baruch, Baruch, Goldberg. A Little Is Enough: Circumventing "
                            "Defenses For Distributed Learning. NeurIPS 2019")
    Params: ClassVar[type[ALIEParams]] = ALIEParams
    strength: ClassVar[str | None] = "z"

    last_z: float | None = None

    def plain_strength(self, ctx: AttackContext) -> float:
        return self.params.z if self.params.z is not None else alie_z(ctx.n, ctx.f)

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        p = self.params
        z = p.z if p.z is not None else alie_z(ctx.n, ctx.f)
        self.last_z = z
        ref = reference_rows(updates, ctx)
        sign = -1.0 if p.direction == "minus" else 1.0
        mean = ref.mean(dim=0)
        # in place on the fresh std: μ + (sign·z)·σ, the same operations and roundings
        mal_update = column_std(ref, p.unbiased, mean).mul_(sign * z).add_(mean)
        return put_rows(updates, malicious_mask(ctx, updates.device), mal_update)


class IPMParams(KnowledgeParams):
    epsilon: float = Field(0.1, gt=0.0, le=1e6,
                           description="the update sent is -epsilon × mean(benign)")


@ATTACKS.register("ipm")
class IPM(Attack):
    """Inner product manipulation (Xie et al., UAI 2019): all malicious clients send
    −ε · mean(benign reference rows), making the aggregate's inner product with the true
    gradient negative for large ε."""

    stage: ClassVar[Stage] = "update"
    paper: ClassVar[str] = ("Xie, Koyejo, Gupta. Fall of Empires: Breaking Byzantine-tolerant "
                            "SGD by Inner Product Manipulation. UAI 2019")
    Params: ClassVar[type[IPMParams]] = IPMParams
    strength: ClassVar[str | None] = "epsilon"

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        mean = reference_rows(updates, ctx).mean(dim=0)
        return put_rows(updates, malicious_mask(ctx, updates.device),
                        -self.params.epsilon * mean)


# ---------------------------------------------------------------- optimized (NDSS 2021)


class ShejwalkarParams(KnowledgeParams):
    perturbation: Literal["unit", "sign", "std"] = Field(
        "std", description="p = -mean/||mean|| (unit), -sign(mean) (sign) or -std (std); "
                           "the authors' code defaults to unit (unit_vec); byzbench keeps "
                           "std, ALIE's direction (docs/attacks.md)")
    gamma_init: float = Field(10.0, gt=0.0, le=1e9, description="first γ of the search")
    tolerance: float = Field(
        1e-5, gt=0.0, lt=1.0,
        description="stop when the bisection bracket is below tolerance × γ (relative)")
    grow: bool = Field(
        True, description="double γ while it still satisfies the constraint before "
                          "bisecting (the authors' search never exceeds 2·gamma_init)")
    max_steps: int = Field(200, ge=1, le=10_000, description="bound on search iterations")


class _QuadraticSearch:
    """The γ search's constraint on cached per-row scalars, with a rigorous error band.

    With c_i = b_i − μ, a_i = ‖c_i‖², q_i = ⟨c_i, p⟩ and P = ‖p‖², the squared distance of
    row i to the candidate μ + γp is the quadratic a_i − 2γ q_i + γ²P; the pairwise squared
    distances come from one Gram matrix, ‖b_i − b_j‖² = a_i + a_j − 2⟨c_i, c_j⟩. Setting up
    costs one ``[k, d] × [d, k]`` product; each step then costs O(k) instead of O(kd).

    :meth:`decide` answers a step only when the answer holds for every value within the
    float64 rounding error of both this and the direct evaluation (dot-product error
    ≤ (d + 2)·ε·Σ|terms|, Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1),
    and of the candidate's rounding through the output dtype; else it returns None and
    the direct ``[k, d]`` evaluation decides. All scalars are float64; the per-step
    arithmetic on the k values runs in numpy (a step is ~15 operations on k numbers, where
    torch's per-operation overhead would dominate)."""

    BLOCK: ClassVar[int] = 2048  # columns of b − μ formed at a time

    def __init__(self, attack: _Shejwalkar, b: torch.Tensor, mean: torch.Tensor,
                 p: torch.Tensor, out_dtype: torch.dtype) -> None:
        self.attack = attack
        self.enabled = (out_dtype.is_floating_point
                        and b.dtype == mean.dtype == p.dtype == torch.float64)
        if not self.enabled:
            return
        k, d = b.shape
        eps = torch.finfo(torch.float64).eps
        self.eps = eps
        self.rounding = 2 * eps * (d + 2)  # ≥ the error of a length-d dot product, relative
        self.out_eps = max(torch.finfo(out_dtype).eps, eps)
        self.out_max = torch.finfo(out_dtype).max
        self.slack = 4 * (k + 4) * eps  # reductions over k values, and the 1 − 1e-12 margin
        out, f64 = torch.finfo(out_dtype), torch.finfo(torch.float64)
        # absolute terms for gradual underflow: a subnormal rounds with an absolute error
        # (≤ one subnormal spacing per coordinate), not a relative one
        self.subnormal = math.sqrt(d) * (out.smallest_normal * out.eps
                                         + f64.smallest_normal * f64.eps)
        self.floor = 4 * (d + k + 4) * f64.smallest_normal
        self.b, self.mean, self.p, self.out_dtype = b, mean, p, out_dtype
        gram, self.q = self.centred(p, gram=True)
        self.a = gram.diagonal().clone()
        self.pp = float(p @ p)
        self.p_norm = math.sqrt(self.pp)
        self.p_inf = float(p.abs().max()) if p.numel() else 0.0
        self.mean_norm = float(mean.norm())
        self.mean_inf = float(mean.abs().max()) if mean.numel() else 0.0
        self.r = self.a.clamp(min=0).sqrt()
        pairwise = self.a[:, None] + self.a[None, :] - 2 * gram
        reach = self.r[:, None] + self.r[None, :]
        band = 4 * (2 * self.rounding + 6 * eps) * reach.square() + self.floor
        hi = float(attack.threshold(pairwise + band))
        lo = float(attack.threshold(pairwise - band))
        self.limit_hi = hi * (1 - 1e-12) + self.slack * abs(hi)
        self.limit_lo = lo * (1 - 1e-12) - self.slack * abs(lo)
        # a non-finite entry of b, μ or p makes one of these non-finite (NaN or ±inf
        # propagates through b − μ and the products): then every step is decided directly
        scalars = (self.limit_hi, self.limit_lo, self.pp, self.mean_norm, self.p_inf)
        self.enabled = (all(math.isfinite(x) for x in scalars)
                        and bool(torch.isfinite(self.a).all() and torch.isfinite(self.q).all()))
        self.a_np, self.q_np, self.r_np = (t.cpu().numpy() for t in (self.a, self.q, self.r))

    def decide(self, gamma: float) -> bool | None:
        """Whether γ satisfies the constraint, or None when rounding could flip the answer.

        First on the quadratic (O(k)), bounding the candidate's rounding through the output
        dtype; if that is too close to call, on the rounded candidate itself (one ``[k, d]``
        matrix-vector product, no ``[k, d]`` temporary)."""
        if not self.enabled or not math.isfinite(gamma):
            return None
        g = abs(gamma)
        if self.mean_inf + g * self.p_inf > self.out_max / 4:
            return None  # the candidate may overflow in the output dtype
        # e bounds ‖candidate − (μ + γp)‖: μ + γp in float64, then in the output dtype
        e = (2 * (self.out_eps + 2 * self.eps) * (self.mean_norm + 2 * g * self.p_norm)
             + 2 * self.subnormal)
        with np.errstate(over="ignore", invalid="ignore"):
            quad = self.a_np - 2 * gamma * self.q_np + gamma * gamma * self.pp
            verdict = self.verdict(quad, self.r_np + g * self.p_norm, e)
            if verdict is not None:
                return verdict
            v = self.attack.candidate(self.mean, self.p, gamma, self.out_dtype) - self.mean
            vv = float(v @ v)
            cv = self.centred(v)[1].cpu().numpy()
            return self.verdict(self.a_np - 2 * cv + vv, self.r_np + math.sqrt(vv), 0.0)

    def centred(self, v: torch.Tensor, gram: bool = False
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(C Cᵀ if ``gram``, C v) for C = b − μ, over blocks of columns: no ``[k, d]``
        temporary (allocating one costs more than the product at k = 80, d = 79,510)."""
        k, d = self.b.shape
        cc = torch.zeros(k, k, dtype=self.b.dtype, device=self.b.device) if gram else None
        cv = torch.zeros(k, dtype=self.b.dtype, device=self.b.device)
        for start in range(0, d, self.BLOCK):
            block = self.b[:, start:start + self.BLOCK] - self.mean[start:start + self.BLOCK]
            if cc is not None:
                cc.addmm_(block, block.T)
            cv.addmv_(block, v[start:start + self.BLOCK])
        return cc, cv

    def verdict(self, quad: np.ndarray, reach: np.ndarray, e: float) -> bool | None:
        """Compare the objective of the squared distances ``quad`` (each within rounding
        of ``reach``², off by a vector of norm ≤ ``e``) with the threshold's bracket."""
        band = (2 * reach * e + e * e + 4 * (2 * self.rounding + 8 * self.eps) * (reach + e) ** 2
                + self.floor)
        hi = float(self.attack.objective(quad + band))
        lo = float(self.attack.objective(quad - band))
        hi, lo = hi + self.slack * abs(hi), lo - self.slack * abs(lo)
        if not (math.isfinite(hi) and math.isfinite(lo)):
            return None
        if hi <= self.limit_lo:
            return True
        if lo > self.limit_hi:
            return False
        return None


class _Shejwalkar(Attack):
    """Common search of min-max and min-sum: malicious = mean + γ·p, γ maximal subject to
    ``objective(distances to benign) ≤ threshold``."""

    stage: ClassVar[Stage] = "update"
    paper: ClassVar[str] = ("Shejwalkar, Houmansadr. Manipulating the Byzantine: Optimizing "
                            "Model Poisoning Attacks and Defenses for Federated Learning. "
                            "NDSS 2021")
    Params: ClassVar[type[ShejwalkarParams]] = ShejwalkarParams

    last_gamma: float | None = None

    @staticmethod
    def perturbation(benign: torch.Tensor, kind: str) -> torch.Tensor:
        """The perturbation direction p of the paper (inverse unit / sign / std)."""
        mean = benign.mean(dim=0)
        if kind == "unit":
            norm_ = mean.norm()
            return -mean / norm_ if norm_ > 0 else torch.zeros_like(mean)
        if kind == "sign":
            return -torch.sign(mean)
        return column_std(benign, unbiased=True, mean=mean).neg_()

    @staticmethod
    def squared_distances(benign: torch.Tensor) -> torch.Tensor:
        """``[k, k]`` pairwise squared distances of the benign rows (one batched kernel;
        computed directly rather than by the Gram trick, which loses precision)."""
        return torch.cdist(benign, benign,
                           compute_mode="donot_use_mm_for_euclid_dist").square()

    def threshold(self, pairwise: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def objective(self, sq_dist: torch.Tensor) -> torch.Tensor:
        """Reduce the malicious update's squared distances to the benign rows (monotone
        in each distance: the search's error bands rely on it)."""
        raise NotImplementedError

    def candidate(self, mean: torch.Tensor, p: torch.Tensor, gamma: float,
                  dtype: torch.dtype) -> torch.Tensor:
        # round through the output dtype, so the constraint holds for what is actually sent
        return (mean + gamma * p).to(dtype).to(mean.dtype)

    def setting(self, benign: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the benign rows in float64, their mean μ, the perturbation p)."""
        b = benign.to(torch.float64)
        return b, b.mean(dim=0), self.perturbation(b, self.params.perturbation)

    def search(self, benign: torch.Tensor, out_dtype: torch.dtype) -> tuple[torch.Tensor, float]:
        """The paper's γ search; returns (malicious update in float64, γ)."""
        return self.search_in(*self.setting(benign), out_dtype)

    def search_in(self, b: torch.Tensor, mean: torch.Tensor, p: torch.Tensor,
                  out_dtype: torch.dtype) -> tuple[torch.Tensor, float]:
        """:meth:`search` on the :meth:`setting` of the benign rows.

        Each step asks whether ``objective(‖b_i − m(γ)‖²) ≤ threshold(‖b_i − b_j‖²)``,
        m(γ) the candidate μ + γp rounded through ``out_dtype``. The answer comes from
        :class:`_QuadraticSearch` (a quadratic in γ on cached per-row scalars, O(k) a
        step) whenever its error bound settles it, else from the direct ``[k, d]``
        evaluation; so the decisions, γ and the rows sent are those of the direct search."""
        p_ = self.params
        fast = _QuadraticSearch(self, b, mean, p, out_dtype)
        exact_limit: list[torch.Tensor] = []

        def exact(gamma: float) -> bool:
            if not exact_limit:
                # a relative margin of 1e-12 absorbs summation-order rounding between this
                # and any other evaluation of the same distances
                exact_limit.append(self.threshold(self.squared_distances(b)) * (1 - 1e-12))
            mal = self.candidate(mean, p, gamma, out_dtype)
            return bool(self.objective((b - mal).square().sum(dim=1)) <= exact_limit[0])

        def ok(gamma: float) -> bool:
            decided = fast.decide(gamma)
            return exact(gamma) if decided is None else decided

        good = halving_search(ok, p_.gamma_init, p_.grow, p_.max_steps, p_.tolerance)
        return self.candidate(mean, p, good, out_dtype), good

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        benign = reference_rows(updates, ctx)
        mal_update, self.last_gamma = self.search(benign, updates.dtype)
        return put_rows(updates, malicious_mask(ctx, updates.device), mal_update)


@ATTACKS.register("minmax")
class MinMax(_Shejwalkar):
    """Min-Max (Shejwalkar & Houmansadr, NDSS 2021): all malicious clients send mean + γ·p,
    γ maximal such that max_i ||mal − b_i||² ≤ max_{i,j} ||b_i − b_j||² over benign rows."""

    def threshold(self, pairwise: torch.Tensor) -> torch.Tensor:
        return pairwise.max()

    def objective(self, sq_dist: torch.Tensor) -> torch.Tensor:
        return sq_dist.max()


@ATTACKS.register("minsum")
class MinSum(_Shejwalkar):
    """Min-Sum (Shejwalkar & Houmansadr, NDSS 2021): all malicious clients send mean + γ·p,
    γ maximal such that Σ_i ||mal − b_i||² ≤ min_j Σ_i ||b_j − b_i||² over benign rows."""

    def threshold(self, pairwise: torch.Tensor) -> torch.Tensor:
        return pairwise.sum(dim=1).min()

    def objective(self, sq_dist: torch.Tensor) -> torch.Tensor:
        return sq_dist.sum()


# ------------------------------------------------------------------------ mimic


class MimicParams(KnowledgeParams):
    choice: Literal["heuristic", "seeded"] = Field(
        "heuristic",
        description="heuristic: the paper's choice, the benign client furthest along the top "
                    "principal direction of the benign updates, estimated over the warm-up; "
                    "seeded: a benign client drawn uniformly with the attack's generator")
    warmup: int = Field(1, ge=1, le=10_000,
                        description="heuristic: active rounds that refine the direction and "
                                    "re-pick the target before it is fixed")


@ATTACKS.register("mimic")
class Mimic(Attack):
    """Mimic (Karimireddy, He, Jaggi, ICLR 2022): all malicious clients copy one benign
    client's update, over-weighting it. The target is fixed (by id) after ``warmup`` active
    rounds: argmax_i ⟨Δ_i, z⟩, z the top principal direction of the benign updates found by
    online power iteration (the authors' code); or drawn with the seed (``choice: seeded``).
    If the fixed target does not take part in a round, a target is re-picked for it."""

    stage: ClassVar[Stage] = "update"
    paper: ClassVar[str] = ("Karimireddy, He, Jaggi. Byzantine-Robust Learning on "
                            "Heterogeneous Datasets via Bucketing. ICLR 2022")
    Params: ClassVar[type[MimicParams]] = MimicParams

    def __init__(self, params: MimicParams | None = None) -> None:
        super().__init__(params)
        self._t = 0
        self._mu: torch.Tensor | None = None
        self._z: torch.Tensor | None = None
        self.target_id: int | None = None

    def _power_step(self, g: torch.Tensor, ctx: AttackContext) -> None:
        avg = g.mean(dim=0)
        if self._t == 0 or self._mu is None or self._z is None:
            self._mu = avg
            z = randn((g.shape[1],), ctx.generator, g)
            self._z = z / z.norm()
        else:
            t = self._t
            self._mu = t / (t + 1) * self._mu + avg / (t + 1)
        c = g - self._mu
        cumu = c.T @ (c @ self._z)
        norm_ = cumu.norm()
        if norm_ > 0 and torch.isfinite(norm_):
            step = cumu / norm_
            z = step if self._t == 0 else (self._t * self._z + step) / (self._t + 1)
            self._z = z / z.norm()

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        p = self.params
        ref = ctx.reference.to(updates.device)
        if not bool(ref.any()):
            ref = malicious_mask(ctx, updates.device)
        ids = ctx.client_ids.to(updates.device)[ref]
        g = updates[ref]
        if p.choice == "heuristic" and self._t < p.warmup:
            self._power_step(g, ctx)
        present = self.target_id is not None and bool((ids == self.target_id).any())
        if not present or (p.choice == "heuristic" and self._t < p.warmup):
            if p.choice == "heuristic":
                if self._z is None:
                    self._power_step(g, ctx)
                pick = int(torch.argmax(g @ self._z))
            else:
                pick = int(torch.randint(g.shape[0], (1,), generator=ctx.generator,
                                         device=ctx.generator.device))
            self.target_id = int(ids[pick])
        self._t += 1
        row = g[ids == self.target_id][0]
        return put_rows(updates, malicious_mask(ctx, updates.device), row)


# ------------------------------------------------------------------------ non-finite


class NonFiniteParams(AttackParams):
    mode: Literal["nan", "inf", "mixed"] = Field(
        "nan", description="entries sent: NaN, +Inf, or a random mix of NaN, +Inf and -Inf")
    fraction: float = Field(
        1.0, gt=0.0, le=1.0,
        description="fraction of each malicious row's coordinates made non-finite "
                    "(at least one; chosen with the attack's generator)")


@ATTACKS.register("nonfinite")
class NonFinite(Attack):
    """Non-finite updates: malicious rows carry NaN/±Inf entries. No paper: a robustness
    check that the server never crashes on arbitrary Byzantine vectors (Lamport, Shostak,
    Pease 1982; Blanchard et al. 2017 allow any vector)."""

    stage: ClassVar[Stage] = "update"
    paper: ClassVar[str] = ("robustness check (Byzantine = arbitrary vectors: Lamport, Shostak, "
                            "Pease. The Byzantine Generals Problem. TOPLAS 1982)")
    Params: ClassVar[type[NonFiniteParams]] = NonFiniteParams

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        p = self.params
        n, d = updates.shape
        mal = malicious_mask(ctx, updates.device)
        if p.fraction >= 1.0:
            hit = torch.ones(n, d, dtype=torch.bool, device=updates.device)
        else:
            u = rand((n, d), ctx.generator, updates)
            hit = u < p.fraction
            hit |= torch.nn.functional.one_hot(u.argmin(dim=1), d).bool()  # at least one
        nan = torch.tensor(float("nan"), dtype=updates.dtype, device=updates.device)
        inf = torch.tensor(float("inf"), dtype=updates.dtype, device=updates.device)
        if p.mode == "nan":
            bad = nan.expand(n, d)
        elif p.mode == "inf":
            bad = inf.expand(n, d)
        else:
            kind = torch.floor(rand((n, d), ctx.generator, updates) * 3)
            bad = torch.where(kind == 0, nan, torch.where(kind == 1, inf, -inf))
        return torch.where(hit & mal.unsqueeze(1), bad, updates)
