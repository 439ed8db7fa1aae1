"""Defense-aware (adaptive) model poisoning: attacks that know the aggregation rule.

Each queries ``ctx.oracle`` — the cell's defense (a plugin or a whole pipeline alike) as a
side-effect-free callable — to shape its rows. Knowledge levels (Fang et al. 2020):
``knowledge: full`` reads the round's honest updates and submits them to the oracle;
``knowledge: partial`` reads only the malicious clients' own honestly-computed updates and
submits surrogate honest rows (see :func:`~byzbench.attacks._search.hypothetical`). Attacks
that ignore the rule (every other attack) are ``agnostic``.

Oracle budget per active round (``evals``; default 8, fang_krum 20): fang_krum at most
``evals`` (one per halving of λ, stopping at the first λ the rule accepts); alie_opt,
ipm_opt and adaptive exactly ``evals`` (the line search); minmax_tailored and
minsum_tailored at most ``evals``; fang_trim none (its values follow from the rule's
definition, not a query). Each call costs one evaluation of the defense.
"""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar

import torch
from pydantic import Field, ValidationError, ValidationInfo, field_validator

from byzbench.attacks._common import (
    KnowledgeParams,
    column_std,
    malicious_mask,
    put_rows,
    rand,
    reference_rows,
)
from byzbench.attacks._search import (
    OracleParams,
    SearchResult,
    deviation,
    hypothetical,
    line_maximize,
    require_oracle,
    selects_malicious,
)
from byzbench.attacks.base import Attack, AttackContext, AttackSetup, Stage
from byzbench.attacks.model import (
    ALIEParams,
    IPMParams,
    MinMax,
    MinSum,
    ShejwalkarParams,
    _Shejwalkar,
    alie_z,
)
from byzbench.registry import ATTACKS, UnknownComponentError, split_spec

FANG = ("Fang, Cao, Jia, Gong. Local Model Poisoning Attacks to Byzantine-Robust Federated "
        "Learning. USENIX Security 2020")


# ----------------------------------------------------------------------- Fang et al. 2020


class FangKrumParams(OracleParams):
    evals: int = Field(20, ge=1, le=1000,
                       description="at most this many oracle calls per active round (one "
                                   "per halving of λ)")
    epsilon: float = Field(
        0.01, ge=0.0, le=1e6,
        description="supporters lie within this ℓ2 distance of the crafted row (uniform in "
                    "the box of half-width ε/√d)")
    threshold: float = Field(1e-5, gt=0.0, le=1e6,
                             description="give up halving λ below this value (the paper's)")


def krum_lambda_bound(benign: torch.Tensor, n: int, f: int) -> float:
    """Fang et al.'s upper bound on λ (Sec. 4.2, full knowledge; partial knowledge reads
    the own rows as ``benign``):

        λ ≤ min_i Σ_{l ∈ Γ̃_i} D(w_l, w_i) / ((n − 2f − 1)·√d) + max_i D(w_i, w_g) / √d,

    i over the benign rows, Γ̃_i the n − f − 2 benign rows closest to row i, D Euclidean
    distance, and D(w_i, w_g) the norm of update i (its distance to the global model). The
    neighbour count is capped at the benign rows available; n − 2f − 1 ≤ 0 counts as 1."""
    b = benign.to(torch.float64)
    k, d = b.shape
    root_d = math.sqrt(d)
    far = float(b.norm(dim=1).max()) / root_d
    neighbours = min(n - f - 2, k - 1)
    if neighbours < 1:
        return far
    dist = torch.cdist(b, b, compute_mode="donot_use_mm_for_euclid_dist")
    dist.fill_diagonal_(math.inf)
    closest = dist.topk(neighbours, dim=1, largest=False).values.sum(dim=1)
    return float(closest.min()) / (max(n - 2 * f - 1, 1) * root_d) + far


@ATTACKS.register("fang_krum")
class FangKrum(Attack):
    """Fang et al.'s attack on Krum and Bulyan (USENIX Security 2020, Sec. 4.2): the first
    malicious row is −λ·s, s = sign of the benign mean update (the direction the model
    would move), the other f − 1 rows are supporters within ε of it. λ starts at the
    paper's upper bound (:func:`krum_lambda_bound`) and halves until the oracle selects a
    malicious row (positive weight, not flagged) or λ < ``threshold``; at most ``evals``
    oracle calls."""

    stage: ClassVar[Stage] = "update"
    paper: ClassVar[str] = FANG
    aware: ClassVar[bool] = True
    Params: ClassVar[type[FangKrumParams]] = FangKrumParams

    last_lambda: float | None = None
    last_calls: int = 0

    def craft(self, updates: torch.Tensor, ctx: AttackContext) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
        """(direction s [d], supporters' offsets [n, d], zero in the first malicious row)."""
        ref = reference_rows(updates, ctx)
        s = torch.sign(ref.mean(dim=0))
        n, d = updates.shape
        mal = malicious_mask(ctx, updates.device)
        half_width = self.params.epsilon / math.sqrt(d)
        offsets = (2 * rand((n, d), ctx.generator, updates) - 1) * half_width
        first = torch.zeros(n, dtype=torch.bool, device=updates.device)
        first[int(mal.nonzero()[0])] = True
        return s, torch.where(first.unsqueeze(1), 0.0, offsets)

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        oracle = require_oracle(ctx, self.name)
        p = self.params
        mal = malicious_mask(ctx, updates.device)
        s, offsets = self.craft(updates, ctx)
        base = hypothetical(updates, ctx)
        lam = krum_lambda_bound(reference_rows(updates, ctx), ctx.n, ctx.f)
        calls = 0
        while True:
            rows = put_rows(base, mal, -lam * s + offsets)
            calls += 1
            if selects_malicious(oracle(rows), mal):
                break
            if calls >= p.evals or lam / 2 < p.threshold:
                break
            lam /= 2
        self.last_lambda, self.last_calls = lam, calls
        return put_rows(updates, mal, -lam * s + offsets)


class FangTrimParams(KnowledgeParams):
    b: float = Field(2.0, gt=1.0, le=1e6,
                     description="full knowledge: values are drawn up to b× beyond the benign "
                                 "extreme (the paper's b = 2)")


@ATTACKS.register("fang_trim")
class FangTrim(Attack):
    """Fang et al.'s attack on Trimmed mean and Median (USENIX Security 2020, Sec. 4.3),
    per coordinate j, s_j the sign of the benign mean update. Full knowledge, with w_max,j
    and w_min,j the benign extremes: if s_j < 0 each malicious value is drawn uniformly in
    [w_max,j, b·w_max,j] (w_max,j > 0) or [w_max,j / b, w_max,j]; if s_j ≥ 0 in
    [w_min,j / b, w_min,j] (w_min,j > 0) or [b·w_min,j, w_min,j]. Partial knowledge, with
    μ_j, σ_j over the own updates: [μ_j + 3σ_j, μ_j + 4σ_j] if s_j < 0, else
    [μ_j − 4σ_j, μ_j − 3σ_j]. The rule is known by design; no oracle call."""

    stage: ClassVar[Stage] = "update"
    paper: ClassVar[str] = FANG
    aware: ClassVar[bool] = True
    Params: ClassVar[type[FangTrimParams]] = FangTrimParams

    @staticmethod
    def bounds(ref: torch.Tensor, b: float, partial: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-coordinate interval [lo, hi] the malicious values are drawn from."""
        mean = ref.mean(dim=0)
        up = mean < 0  # the model moves down: push up
        if partial:
            sd = column_std(ref, mean=mean)
            lo = torch.where(up, mean + 3 * sd, mean - 4 * sd)
            return lo, lo + sd
        w_max, w_min = ref.max(dim=0).values, ref.min(dim=0).values
        # beyond the extreme, away from the benign direction: b× it, or ÷b when that is
        # the larger (resp. smaller) value
        beyond_max = torch.where(w_max > 0, b * w_max, w_max / b)
        beyond_min = torch.where(w_min > 0, w_min / b, b * w_min)
        return torch.where(up, w_max, beyond_min), torch.where(up, beyond_max, w_min)

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        ref = reference_rows(updates, ctx)
        lo, hi = self.bounds(ref, self.params.b, self.knowledge == "partial")
        u = rand(tuple(updates.shape), ctx.generator, updates)
        return put_rows(updates, malicious_mask(ctx, updates.device), lo + u * (hi - lo))


# ------------------------------------------------------------------ optimised ALIE / IPM


class _StrengthSearch(Attack):
    """An attack whose rows follow from one scalar strength x; x is chosen each round by
    :func:`~byzbench.attacks._search.line_maximize` of ‖oracle(rows(x)).aggregate − μ‖,
    μ the benign reference mean, starting from the plain attack's value (so the search
    can never do less damage, by that measure, than the plain attack)."""

    stage: ClassVar[Stage] = "update"
    aware: ClassVar[bool] = True
    lower: ClassVar[float] = 0.0

    last_strength: float | None = None
    last_search: SearchResult | None = None

    def plain(self, ctx: AttackContext) -> float:
        raise NotImplementedError

    def rows(self, updates: torch.Tensor, ctx: AttackContext, x: float
             ) -> torch.Tensor | None:
        """The full matrix with the malicious rows at strength ``x`` (None: x invalid)."""
        raise NotImplementedError

    def prepare(self, ref: torch.Tensor, mu: torch.Tensor, ctx: AttackContext) -> None:
        """Per-round statistics, computed once before the search from the benign reference
        rows ``ref`` and their mean ``mu``."""

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        oracle = require_oracle(ctx, self.name)
        base = hypothetical(updates, ctx)
        ref = reference_rows(updates, ctx)
        mu = ref.mean(dim=0)
        self.prepare(ref, mu, ctx)

        def score(x: float) -> float:
            rows = self.rows(base, ctx, x)
            return -math.inf if rows is None else deviation(oracle(rows), mu)

        result = line_maximize(score, self.plain(ctx), 1.0, self.params.evals,
                               lower=self.lower)
        self.last_strength, self.last_search = result.x, result
        return self.final(updates, ctx, result.x)

    def final(self, updates: torch.Tensor, ctx: AttackContext, x: float) -> torch.Tensor:
        """The rows actually sent, at the chosen strength."""
        rows = self.rows(updates, ctx, x)
        assert rows is not None  # the start point is valid, so the best one is
        return rows


class ALIEOptParams(ALIEParams, OracleParams):
    pass


@ATTACKS.register("alie_opt")
class ALIEOpt(_StrengthSearch):
    """Optimal ALIE (as ByzFL's): ALIE's rows μ ∓ z·σ with z chosen each round by a line
    search (start: the plain ALIE z, or ``z`` if given; step 1, z ≥ 0) maximising
    ‖oracle(rows).aggregate − μ‖; exactly ``evals`` oracle calls."""

    paper: ClassVar[str] = ("Baruch, Baruch, Goldberg. A Little Is Enough: Circumventing "
                            "Defenses For Distributed Learning. NeurIPS 2019 (z by line search "
                            "against the rule, as in ByzFL: Gonzalez et al. 2025)")
    Params: ClassVar[type[ALIEOptParams]] = ALIEOptParams

    def plain(self, ctx: AttackContext) -> float:
        z = self.params.z
        return z if z is not None else alie_z(ctx.n, ctx.f)

    def prepare(self, ref: torch.Tensor, mu: torch.Tensor, ctx: AttackContext) -> None:
        sign = -1.0 if self.params.direction == "minus" else 1.0
        self._mean, self._dir = mu, sign * column_std(ref, self.params.unbiased, mu)

    def rows(self, updates: torch.Tensor, ctx: AttackContext, x: float) -> torch.Tensor:
        return put_rows(updates, malicious_mask(ctx, updates.device), self._mean + x * self._dir)


class IPMOptParams(IPMParams, OracleParams):
    pass


@ATTACKS.register("ipm_opt")
class IPMOpt(_StrengthSearch):
    """Optimal inner product manipulation (as ByzFL's): IPM's rows −ε·μ with ε chosen each
    round by a line search (start: ``epsilon``, the plain IPM's 0.1; step 1, ε ≥ 0)
    maximising ‖oracle(rows).aggregate − μ‖; exactly ``evals`` oracle calls."""

    paper: ClassVar[str] = ("Xie, Koyejo, Gupta. Fall of Empires: Breaking Byzantine-tolerant "
                            "SGD by Inner Product Manipulation. UAI 2019 (ε by line search "
                            "against the rule, as in ByzFL: Gonzalez et al. 2025)")
    Params: ClassVar[type[IPMOptParams]] = IPMOptParams

    def plain(self, ctx: AttackContext) -> float:
        return self.params.epsilon

    def prepare(self, ref: torch.Tensor, mu: torch.Tensor, ctx: AttackContext) -> None:
        self._mean = mu

    def rows(self, updates: torch.Tensor, ctx: AttackContext, x: float) -> torch.Tensor:
        return put_rows(updates, malicious_mask(ctx, updates.device), -x * self._mean)


# ------------------------------------------------------------------- the generic wrapper


class AdaptiveParams(OracleParams):
    attack: str | dict[str, Any] = Field(
        "sign_flip", validate_default=True,
        description="the update attack to adapt: a name or a mapping with its parameters")
    param: str | None = Field(
        None, description="its scalar strength parameter to search (default: the one the "
                          "attack declares, e.g. alie: z, ipm: epsilon, sign_flip: factor)")

    @field_validator("attack", mode="after")
    @classmethod
    def _inner(cls, value: str | dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """The wrapped spec, resolved and validated; it reads the benign rows the wrapper's
        ``knowledge`` allows (its own ``knowledge`` is overridden)."""
        name, params, _ = split_spec(value, "attack")
        try:
            inner = ATTACKS.get(name)
        except UnknownComponentError as exc:
            raise ValueError(str(exc)) from None
        if inner.stage != "update" or inner.aware or inner.benign:
            raise ValueError(f"attack {name!r} cannot be adapted: adaptive wraps an update "
                             "attack that ignores the rule (stage update, not aware)")
        if "knowledge" in inner.Params.model_fields and "knowledge" in info.data:
            params["knowledge"] = info.data["knowledge"]
        return {"name": name, "params": inner.Params(**params).model_dump(mode="json")}


@ATTACKS.register("adaptive")
class Adaptive(_StrengthSearch):
    """Any update attack made defense-aware: its scalar strength x (``param``) is chosen
    each round by a line search on a log scale, x = x₀·2^t (t from 0, step 1), maximising
    ‖oracle(rows).aggregate − μ‖; x₀ is the wrapped attack's own value, so t = 0 is the
    plain attack. Every evaluation replays the wrapped attack with the round's generator
    state, so its random draws are the same at every x; exactly ``evals`` oracle calls."""

    paper: ClassVar[str] = ("a defense-aware wrapper in the spirit of ByzFL's optimal attacks "
                            "(Gonzalez et al. 2025) and the adaptive-attack methodology of "
                            "Tramèr, Carlini, Brendel, Madry. On Adaptive Attacks to "
                            "Adversarial Example Defenses. NeurIPS 2020")
    Params: ClassVar[type[AdaptiveParams]] = AdaptiveParams
    lower: ClassVar[float] = -math.inf

    def __init__(self, params: AdaptiveParams | None = None) -> None:
        super().__init__(params)
        spec = self.params.attack
        cls = ATTACKS.get(spec["name"])
        self.inner: Attack = cls(cls.Params(**spec["params"]))
        self.param = self.params.param or cls.strength
        fields = cls.Params.model_fields
        if self.param is None or self.param not in fields:
            allowed = ", ".join(k for k, f in fields.items() if f.annotation in (float, float | None))
            raise ValueError(f"adaptive: attack {spec['name']!r} declares no strength "
                             f"parameter; set param to one of: {allowed or 'none'}")

    def setup(self, setup: AttackSetup) -> None:
        super().setup(setup)
        self.inner.setup(setup)

    def plain(self, ctx: AttackContext) -> float:
        return 0.0  # t = 0: the wrapped attack's own strength

    def prepare(self, ref: torch.Tensor, mu: torch.Tensor, ctx: AttackContext) -> None:
        self._x0 = self.inner.plain_strength(ctx)
        self._state = ctx.generator.get_state()

    def _params_at(self, t: float) -> Any | None:
        try:
            return self.inner.Params(**{**self.inner.params.model_dump(),
                                        self.param: self._x0 * 2.0 ** t})
        except (ValidationError, OverflowError):
            return None  # outside the parameter's range

    def _run(self, attack: Attack, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        ctx.generator.set_state(self._state)
        poisoned = attack.poison_updates(updates.clone(), ctx)
        return torch.where(malicious_mask(ctx, updates.device).unsqueeze(1),
                           poisoned.to(updates.dtype), updates)

    def rows(self, updates: torch.Tensor, ctx: AttackContext, x: float
             ) -> torch.Tensor | None:
        params = self._params_at(x)
        if params is None:
            return None
        trial = copy.copy(self.inner)  # a trial never advances the wrapped attack's state
        trial.params = params
        return self._run(trial, updates, ctx)

    def final(self, updates: torch.Tensor, ctx: AttackContext, x: float) -> torch.Tensor:
        params = self._params_at(x)
        assert params is not None
        self.inner.params = params
        self.last_strength = float(getattr(params, self.param))
        return self._run(self.inner, updates, ctx)


# ------------------------------------------------- AGR-tailored min-max / min-sum (NDSS 2021)


class TailoredParams(ShejwalkarParams, OracleParams):
    evals: int = Field(8, ge=1, le=1000,
                       description="at most this many oracle calls per active round (the "
                                   "agnostic γ's included)")


class _Tailored(_Shejwalkar):
    """AGR-tailored variant (Shejwalkar & Houmansadr, NDSS 2021, Sec. IV-B): malicious =
    μ + γ·p with γ maximising ‖oracle(rows).aggregate − μ‖ by the authors' halving search —
    from ``gamma_init``, step up (by half the last step) on success, down otherwise, until
    the bracket is below ``tolerance`` × γ or ``evals`` oracle calls. The AGR-agnostic γ
    (the plain attack's) is evaluated first, a step succeeds when it beats the best
    deviation so far (the authors' code compares with the previous step's, which takes
    any first step for a success), and the γ sent is the best evaluated: the tailored
    attack never does less damage than the agnostic one by that measure."""

    aware: ClassVar[bool] = True
    Params: ClassVar[type[TailoredParams]] = TailoredParams

    last_search: SearchResult | None = None

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        oracle = require_oracle(ctx, self.name)
        p_ = self.params
        mal = malicious_mask(ctx, updates.device)
        base = hypothetical(updates, ctx)
        b, mean, direction = self.setting(reference_rows(updates, ctx))
        _, agnostic = self.search_in(b, mean, direction, updates.dtype)
        result = SearchResult(0.0, -math.inf)

        def score(gamma: float) -> float:
            rows = put_rows(base, mal, self.candidate(mean, direction, gamma, updates.dtype))
            value = deviation(oracle(rows), mean)
            result.points.append((gamma, value))
            if value > result.score:
                result.x, result.score = gamma, value
            return value

        score(agnostic)
        gamma, step, good = p_.gamma_init, p_.gamma_init, 0.0
        while result.calls < p_.evals:
            best = result.score
            if score(gamma) > best:
                good = gamma
                gamma += step / 2
            else:
                gamma -= step / 2
            step /= 2
            if abs(good - gamma) <= p_.tolerance * max(good, 1e-12):
                break
        self.last_gamma, self.last_search = result.x, result
        return put_rows(updates, mal, self.candidate(mean, direction, result.x, updates.dtype))


@ATTACKS.register("minmax_tailored")
class MinMaxTailored(_Tailored, MinMax):
    """Min-Max, AGR-tailored (Shejwalkar & Houmansadr, NDSS 2021): all malicious clients
    send μ + γ·p, γ maximising the deviation of the oracle's aggregate from μ (the
    agnostic ``minmax`` γ is the search's first point)."""


@ATTACKS.register("minsum_tailored")
class MinSumTailored(_Tailored, MinSum):
    """Min-Sum, AGR-tailored (Shejwalkar & Houmansadr, NDSS 2021): all malicious clients
    send μ + γ·p, γ maximising the deviation of the oracle's aggregate from μ (the
    agnostic ``minsum`` γ is the search's first point)."""
