"""Defense suite, part B: geomed, bulyan, centered_clipping, clipped_clustering, flame,
foolsgold, fltrust, dnc, sign_statistics — hand-computed cases, clear detection cases,
robustness to non-finite / huge rows, permutation equivariance."""

from __future__ import annotations

import math

import pydantic
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzbench.defenses.base import DefenseSetup, RoundContext, Verdict
from byzbench.registry import DEFENSES

NAMES = ["geomed", "bulyan", "centered_clipping", "clipped_clustering", "flame", "foolsgold",
         "fltrust", "dnc", "sign_statistics"]
# rules whose output is a function of the rows only (no random draw), for equivariance
DETERMINISTIC = {
    "geomed": {}, "bulyan": {}, "centered_clipping": {}, "clipped_clustering": {},
    "flame": {"noise_lambda": 0.0}, "foolsgold": {}, "dnc": {"subsample_dim": 10**6},
    "sign_statistics": {"coord_fraction": 1.0}, "fltrust": {},
}


def make(name: str, server_update=None, n: int = 10, d: int = 4, f: int = 1, **params):
    cls = DEFENSES.get(name)
    defense = cls(cls.Params(**params))
    if server_update is None:
        def server_update(theta, round_):  # a plausible honest direction
            return torch.ones(d, dtype=theta.dtype)
    defense.setup(DefenseSetup(num_clients=max(n, 1), clients_per_round=n, f=f, dim=d, seed=0,
                               device=torch.device("cpu"), server_update=server_update))
    return defense


def ctx(n: int, f: int = 1, d: int = 4, seed: int = 0, ids=None, samples=None,
        global_params=None, round_: int = 0) -> RoundContext:
    return RoundContext(
        round=round_,
        client_ids=torch.arange(n) if ids is None else torch.as_tensor(ids),
        num_samples=torch.ones(n) if samples is None else torch.as_tensor(samples,
                                                                           dtype=torch.float32),
        f=f, generator=torch.Generator().manual_seed(seed),
        global_params=torch.zeros(d) if global_params is None else global_params)


def run(name: str, x: torch.Tensor, f: int = 1, server_update=None, c=None, **params) -> Verdict:
    n, d = x.shape
    defense = make(name, server_update, n=n, d=d, f=f, **params)
    return defense(x, c or ctx(n, f, d))


def close(a, b, tol=1e-5) -> bool:
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64),
                          torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=tol)


# -- registry, parameters, documentation ---------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_registered_documented_and_validated(name):
    cls = DEFENSES.get(name)
    assert cls.name == name and cls.paper and cls.__doc__
    cls.Params()  # defaults are valid
    with pytest.raises(pydantic.ValidationError):
        cls.Params(no_such_parameter=1)
    for field in cls.Params.model_fields.values():
        assert field.description


def test_privacy_and_root_data():
    assert DEFENSES.get("fltrust").privacy.needs_server_data
    assert make("fltrust").root_data_size() == 100
    assert make("fltrust", root_size=7).root_data_size() == 7
    assert DEFENSES.get("foolsgold").privacy.keeps_client_state
    for name in NAMES:
        if name != "fltrust":
            assert make(name).root_data_size() == 0
            assert not DEFENSES.get(name).privacy.needs_server_data


def test_parameter_validation():
    flame = DEFENSES.get("flame").Params
    with pytest.raises(pydantic.ValidationError):
        flame(noise_lambda=0.01, epsilon=10.0)
    assert math.isclose(flame(epsilon=3705, delta=0.001).lam,
                        math.sqrt(2 * math.log(1.25 / 0.001)) / 3705)
    assert flame().lam == 0.001
    with pytest.raises(pydantic.ValidationError):
        DEFENSES.get("sign_statistics").Params(norm_low=0.5, norm_high=0.4)
    with pytest.raises(pydantic.ValidationError):
        DEFENSES.get("centered_clipping").Params(tau=0.0)


# -- geomed --------------------------------------------------------------------------------

def test_geomed_equilateral_triangle_is_its_centroid():
    # the geometric median (Fermat point) of an equilateral triangle is its centroid; the
    # coordinate-wise median start (1, 0) is not, so Weiszfeld has to move
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, math.sqrt(3.0)]])
    v = run("geomed", x, iters=200, weighting="uniform")
    assert close(v.aggregate, [1.0, math.sqrt(3.0) / 3], tol=1e-4)
    assert v.flagged is None
    assert close(v.weights, [1 / 3] * 3, tol=1e-3)


def test_geomed_obtuse_vertex_and_collinear_points():
    # a triangle with an angle ≥ 120° has its geometric median at that vertex
    x = torch.tensor([[0.0, 0.0], [-1.0, 0.1], [1.0, 0.1]])
    v = run("geomed", x, iters=300, init="mean", nu=1e-8)
    assert close(v.aggregate, [0.0, 0.0], tol=1e-3)
    # on a line the geometric median is the median point: an outlier does not pull it
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [100.0, 0.0]])
    v = run("geomed", x, iters=300, init="mean", nu=1e-8)
    assert close(v.aggregate, [2.0, 0.0], tol=1e-3)


def test_geomed_sample_weights():
    # α = (3, 1): the α-weighted geometric median of two points is the heavier point
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    v = run("geomed", x, iters=100, init="mean", c=ctx(2, samples=[3.0, 1.0], d=2))
    assert close(v.aggregate, [0.0, 0.0], tol=1e-4)
    v = run("geomed", x, iters=100, weighting="uniform", init="mean",
            c=ctx(2, samples=[3.0, 1.0], d=2))
    assert close(v.aggregate, [0.5, 0.5], tol=1e-4)  # equal weights: any point between


def test_geomed_weights_reproduce_aggregate():
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(1))
    v = run("geomed", x, iters=7)
    assert close(v.weights.sum(), 1.0) and close(v.weights @ x, v.aggregate, tol=1e-5)


# -- bulyan --------------------------------------------------------------------------------

def test_bulyan_requirement():
    b = make("bulyan")
    assert b.requirement(10, 2) is not None and "4f+3" in b.requirement(10, 2)
    assert b.requirement(11, 2) is None
    assert b.requirement(3, 0) is None
    assert b.requirement(6, 1) is not None


def test_bulyan_by_hand():
    # n = 7, f = 1: θ = n − 2f = 5 recursive Krum picks, β = θ − 2f = 3 values per coordinate.
    # Krum on r remaining rows sums the squared distances to the r − f − 2 nearest (≥ 1):
    #   r=7,k=4: scores 0:90 1:63 3:39 4:42 8:154 20:1050 100:33489 → pick 3
    #   r=6,k=3: 0:81 1:59 4:41 8:129 20:761 100:24080             → pick 4
    #   r=5,k=2: 0:65 1:50 8:113 20:505 100:14864                  → pick 1
    #   r=4,k=1: 0:64 8:64 (tie: with 2 neighbours 0:10464 8:8672)   → pick 8
    #   r=3,k=1: 0:400 20:400 (tie: with 2 neighbours 0:10400 20:6800) → pick 20
    # S = {1, 3, 4, 8, 20}, median 4, the 3 closest: 4, 3, 1 → (4 + 3 + 1) / 3
    values = [0.0, 1.0, 3.0, 4.0, 8.0, 20.0, 100.0]
    x = torch.tensor(values, dtype=torch.float64)[:, None]
    v = run("bulyan", x, f=1)
    assert close(v.aggregate, [8.0 / 3.0])
    assert v.flagged.tolist() == [True, False, False, False, False, False, True]
    assert int((~v.flagged).sum()) == 7 - 2 * 1                      # θ
    assert close(v.weights, [0, 1 / 3, 1 / 3, 1 / 3, 0, 0, 0])      # β = 3 values, 1 coord
    # trimmed-mean variant: drop the f = 1 largest and smallest of S → (3 + 4 + 8) / 3
    v = run("bulyan", x, f=1, coordinate="trimmed_mean")
    assert close(v.aggregate, [5.0])


def _bulyan_reference(x: torch.Tensor, f: int) -> torch.Tensor:
    """Plain loop implementation of El Mhamdi et al.'s Bulyan (for comparison)."""
    n = x.shape[0]
    rows = list(range(n))
    chosen = []
    for _ in range(n - 2 * f):
        r = len(rows)
        k = min(max(r - f - 2, 1), r - 1)

        def score(i, k):
            ds = sorted(float(((x[i] - x[j]) ** 2).sum()) for j in rows if j != i)
            return sum(ds[:k])
        best = min(rows, key=lambda i: (score(i, k), score(i, min(k + 1, r - 1))))
        chosen.append(best)
        rows.remove(best)
    s = x[chosen]
    beta = len(chosen) - 2 * f
    out = torch.empty(x.shape[1], dtype=x.dtype)
    for c in range(x.shape[1]):
        col = s[:, c]
        med = col.median() if len(col) % 2 else col.sort().values[len(col) // 2 - 1:
                                                                   len(col) // 2 + 1].mean()
        out[c] = col[(col - med).abs().argsort()[:beta]].mean()
    return out


@pytest.mark.parametrize("n,f", [(7, 1), (11, 2), (16, 3)])
def test_bulyan_matches_loop_reference(n, f):
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    x[:f] += 3.0
    v = run("bulyan", x, f=f)
    assert close(v.aggregate, _bulyan_reference(x, f), tol=1e-9)
    assert int((~v.flagged).sum()) == n - 2 * f
    assert close(v.weights.sum(), 1.0)


def test_bulyan_clamps_f_and_multikrum_variant():
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(3))
    v = run("bulyan", x, f=5)                      # 7 rows support f = 1 only
    assert int((~v.flagged).sum()) == 5 and torch.isfinite(v.aggregate).all()
    v = run("bulyan", x, f=1, selection="multikrum")
    assert int((~v.flagged).sum()) == 5


# -- centered clipping ---------------------------------------------------------------------

def test_centered_clipping_one_iteration_by_hand():
    # v₀ = 0 (first round), τ = 1: (3,4) has norm 5 → (0.6, 0.8); (0.3,0.4) and (−1,0) stay
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [-1.0, 0.0]])
    cc = make("centered_clipping", n=3, d=2, tau=1.0)
    v = cc(x, ctx(3, d=2))
    assert close(v.aggregate, [(0.6 + 0.3 - 1.0) / 3, (0.8 + 0.4) / 3])
    # coefficients (0.2/3, 1/3, 1/3) on the rows; weights are the shares (0.2, 1, 1)/2.2
    assert close(torch.tensor([0.2 / 3, 1 / 3, 1 / 3]) @ x, v.aggregate)
    assert close(v.weights, [0.2 / 2.2, 1 / 2.2, 1 / 2.2]) and v.flagged is None
    # next round starts from that aggregate
    v0 = v.aggregate.clone()
    diff = x - v0
    scale = (1.0 / diff.norm(dim=1)).clamp(max=1.0)
    expected = v0 + (scale[:, None] * diff).mean(dim=0)
    v = cc(x, ctx(3, d=2, round_=1))
    assert close(v.aggregate, expected)


def test_centered_clipping_state_resets_and_median_centre():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [-1.0, 0.0]])
    cc = make("centered_clipping", n=3, d=2, tau=1.0)
    first = cc(x, ctx(3, d=2)).aggregate
    cc(x, ctx(3, d=2))
    cc.setup(DefenseSetup(3, 3, 1, 2, 0, torch.device("cpu")))
    assert close(cc(x, ctx(3, d=2)).aggregate, first)
    # stateless median centre: v₀ = (0.3, 0.4) every round
    v = run("centered_clipping", x, tau=100.0, center="median")
    assert close(v.aggregate, x.mean(dim=0))


# -- fltrust -------------------------------------------------------------------------------

def test_fltrust_by_hand():
    g0 = torch.tensor([3.0, 4.0])                                # ‖g₀‖ = 5
    x = torch.tensor([[6.0, 8.0],      # cos 1,   TS 1,   rescaled (3, 4)
                      [0.0, 2.0],      # cos 0.8, TS 0.8, rescaled (0, 5)
                      [-3.0, -4.0]])   # cos −1,  TS 0
    v = run("fltrust", x, server_update=lambda theta, r: g0)
    assert close(v.aggregate, [(3.0 + 0.0) / 1.8, (4.0 + 0.8 * 5.0) / 1.8])
    assert close(v.weights, [1.0 / 1.8, 0.8 / 1.8, 0.0])                # TS_i / Σ TS
    assert v.flagged.tolist() == [False, False, True]


def test_fltrust_needs_server_update_and_survives_bad_rows():
    defense = DEFENSES.get("fltrust")()
    defense.setup(DefenseSetup(3, 3, 0, 2, 0, torch.device("cpu")))
    with pytest.raises(RuntimeError, match="server_update"):
        defense(torch.ones(3, 2), ctx(3, d=2))
    g0 = torch.tensor([1.0, 1.0])
    x = torch.tensor([[1.0, 0.9], [float("nan"), 1.0], [1e30, 1e30], [0.9, 1.0]])
    v = run("fltrust", x, server_update=lambda theta, r: g0)
    assert torch.isfinite(v.aggregate).all() and v.aggregate.norm() <= g0.norm() * 1.0001
    assert v.flagged.tolist() == [False, True, False, False]
    assert v.weights[1] == 0


# -- foolsgold -----------------------------------------------------------------------------

def test_foolsgold_by_hand():
    # orthogonal histories: nobody resembles anyone → α = 1 → plain mean
    x = torch.eye(3)
    v = run("foolsgold", x)
    assert close(v.weights, [1 / 3] * 3) and close(v.aggregate, [1 / 3] * 3)
    # a = e₁, b = (e₁+e₂)/√2 (cos 0.707), c = e₃: α = 1 − 0.707 = 0.293 for a and b,
    # 1 for c; logit(0.293) + 0.5 < 0 → 0; c → 0.99 → logit > 1 → 1
    x = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    v = run("foolsgold", x)
    assert close(v.weights, [0.0, 0.0, 1.0]) and v.flagged.tolist() == [True, True, False]


def test_foolsgold_pardoning_by_hand():
    # cos(a,b) = .7071, cos(a,c) = .7001, cos(b,c) = .9901; a's similarities are pardoned
    # by v_a/v_b = .7071/.9901 → max .505 → α_a = .495; α_b = α_c = .0099; /max → a: 1 → .99
    # → 1, b, c: 0.02 → logit < 0 → 0
    x = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.2]])
    v = run("foolsgold", x)
    assert close(v.weights, [1.0, 0.0, 0.0])


def test_foolsgold_sybils_get_zero_weight_and_state_is_keyed_by_id():
    gen = torch.Generator().manual_seed(0)
    honest = torch.randn(4, 50, generator=gen)
    sybil = torch.randn(50, generator=gen)
    x = torch.cat([honest, sybil[None], sybil[None]])            # ids 0..5, sybils 4 and 5
    fg = make("foolsgold", n=8, d=50)
    v = fg(x, ctx(6, d=50))
    assert close(v.weights[4:], [0.0, 0.0]) and bool((v.weights[:4] > 0).all())
    assert v.flagged.tolist() == [False] * 4 + [True, True]
    # next round: other order, sybils send small different updates; their histories (keyed
    # by client id, not by row) stay nearly identical → still weight 0
    ids = [5, 2, 4, 0, 1, 3, 7]
    y = torch.randn(7, 50, generator=gen)
    y[0] *= 0.01
    y[2] *= 0.01
    v = fg(y, ctx(7, d=50, ids=ids))
    assert close(v.weights[[0, 2]], [0.0, 0.0])
    assert bool((v.weights[[1, 3, 4, 5, 6]] > 0).all())


# -- clear detection cases -----------------------------------------------------------------

def _clear_case(n_honest=12, n_bad=4, d=200, seed=0, bad="flip", bias=0.0):
    """Honest rows around a direction u (plus ``bias``: a share of positive coordinates
    above one half), and a tight malicious group: −u (flip) or u + a far shift."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=gen) + bias
    honest = u + 0.3 * torch.randn(n_honest, d, generator=gen)
    if bad == "flip":
        evil = -u - 0.3 * torch.randn(n_bad, d, generator=gen)
    else:  # a coherent group pushed far along one direction
        evil = u + 8.0 * torch.randn(d, generator=gen) + 0.3 * torch.randn(n_bad, d,
                                                                            generator=gen)
    return torch.cat([evil, honest]), n_bad


@pytest.mark.parametrize("name,params,bad", [
    ("clipped_clustering", {}, "flip"),
    ("dnc", {}, "flip"),
    ("dnc", {"subsample_dim": 50, "niters": 3}, "shift"),
    ("sign_statistics", {}, "flip"),
    ("sign_statistics", {"clusterer": "kmeans"}, "flip"),
    ("fltrust", {}, "flip"),
    ("flame", {"selection_epsilon": 0.1, "cluster_on": "updates"}, "flip"),
])
def test_clear_case_flags_exactly_the_outliers(name, params, bad):
    signs = name == "sign_statistics"   # sign statistics need a sign imbalance to see a flip
    x, k = _clear_case(bad=bad, d=2000 if signs else 200, bias=0.8 if signs else 0.0)
    u = x[k:].mean(dim=0)
    v = run(name, x, f=k, server_update=lambda theta, r: u, **params)
    assert v.flagged.tolist() == [True] * k + [False] * (len(x) - k)
    assert bool((v.weights[:k] == 0).all())


def test_bulyan_clear_case():
    # a tight group of f = 3 far-away rows: recursive Krum may still pick one of them in its
    # last steps (k = r − f − 2 shrinks to 2, where the group looks dense), but the
    # coordinate step around the median gives it (almost) no weight
    x, k = _clear_case(bad="shift", n_bad=3)
    v = run("bulyan", x, f=3)
    assert int((~v.flagged).sum()) == len(x) - 2 * 3
    assert float(v.weights[:k].sum()) < 0.02
    lo, hi = x[k:].min(dim=0).values, x[k:].max(dim=0).values
    assert bool(((v.aggregate >= lo) & (v.aggregate <= hi)).all())


@pytest.mark.parametrize("cluster_on", ["models", "updates"])
def test_flame_clear_case(cluster_on):
    x, k = _clear_case()
    theta = 5.0 * torch.randn(x.shape[1], generator=torch.Generator().manual_seed(9))
    c = ctx(len(x), f=k, d=x.shape[1], global_params=theta)
    v = run("flame", x, c=c, noise_lambda=0.0, cluster_on=cluster_on)
    admitted = ~v.flagged
    assert bool(v.flagged[:k].all())                            # every outlier is out
    # HDBSCAN's single-cluster labelling (ε = 0, the paper's setting) admits only the
    # densest ⌊n/2⌋+1 or more models: some honest ones are flagged too
    assert int(admitted.sum()) >= len(x) // 2 + 1
    norms = x.norm(dim=1)
    s_t = norms.median() if len(x) % 2 else norms.sort().values[len(x) // 2 - 1:
                                                                len(x) // 2 + 1].mean()
    coef = torch.where(admitted, (s_t / norms).clamp(max=1.0), 0.0) / admitted.sum()
    assert close(coef @ x, v.aggregate, tol=1e-5)            # mean of the clipped updates
    assert close(v.weights, admitted.float() / admitted.sum())


def test_flame_clip_to_admitted_median():
    x, k = _clear_case()
    x[:k] *= 20.0                                        # the outliers also have huge norms
    v = run("flame", x, noise_lambda=0.0, clip_median="admitted")
    admitted = ~v.flagged
    s_t = torch.quantile(x[admitted].norm(dim=1).double(), 0.5)
    coef = torch.where(admitted, (s_t / x.norm(dim=1)).clamp(max=1.0), 0.0)
    assert close(coef @ x / admitted.sum(), v.aggregate, tol=1e-5)


def test_flame_noise_level():
    x, k = _clear_case(d=20000)
    c = ctx(len(x), f=k, d=x.shape[1])
    quiet = run("flame", x, c=c, noise_lambda=0.0)
    loud = run("flame", x, c=ctx(len(x), f=k, d=x.shape[1]), noise_lambda=0.01)
    s_t = torch.quantile(x.norm(dim=1).double(), 0.5)
    std = (loud.aggregate - quiet.aggregate).std()
    assert abs(float(std) / (0.01 * float(s_t)) - 1.0) < 0.05


def test_flame_model_distances_are_accurate():
    from byzbench.defenses.flame import model_cosine_distances
    gen = torch.Generator().manual_seed(2)
    theta = 100.0 * torch.randn(500, generator=gen, dtype=torch.float64)
    delta = torch.randn(6, 500, generator=gen, dtype=torch.float64)
    delta[0] *= 1e6                                              # a very different norm
    w = torch.nn.functional.normalize(delta + theta, dim=1)
    exact = 1.0 - w @ w.T
    got = model_cosine_distances(delta.float(), theta.float())
    assert torch.allclose(got[1:, 1:], exact[1:, 1:], atol=1e-6)  # near-parallel models
    assert torch.allclose(got, exact, atol=1e-5)


def test_clipped_clustering_weights_and_norm_history():
    x, k = _clear_case()
    cc = make("clipped_clustering", n=len(x), d=x.shape[1])
    v = cc(x, ctx(len(x), d=x.shape[1]))
    norms = x.norm(dim=1)
    tau = torch.quantile(norms.double(), 0.5)
    keep = ~v.flagged
    coef = torch.where(keep, (tau / norms).clamp(max=1.0), 0.0) / keep.sum()
    assert close(coef @ x, v.aggregate) and close(v.weights, keep.float() / keep.sum())
    # second round with small updates: the threshold is the median of all norms so far
    v = cc(0.1 * x, ctx(len(x), d=x.shape[1]))
    tau2 = torch.quantile(torch.cat([norms, 0.1 * norms]).double(), 0.5)
    keep = ~v.flagged
    coef = torch.where(keep, (tau2 / (0.1 * norms)).clamp(max=1.0), 0.0) / keep.sum()
    assert close(coef @ (0.1 * x), v.aggregate)


def test_sign_statistics_norm_filter():
    # honest rows with one sign pattern (same sign statistics), norms around the median
    gen = torch.Generator().manual_seed(4)
    u = torch.randn(500, generator=gen)
    x = u * (1.0 + 0.3 * torch.rand(10, 1, generator=gen))
    x[0] *= 10.0                                    # same signs, 10× the median norm
    x[1] *= 0.01                                    # 0.01× the median norm
    v = run("sign_statistics", x, f=2)
    assert v.flagged[:2].all() and not v.flagged[2:].any()
    med = torch.quantile(x.norm(dim=1).double(), 0.5)
    assert v.aggregate.norm() <= med * 1.0001      # clipped to the median norm


# -- robustness: NaN, Inf and huge rows ----------------------------------------------------

BAD_ROWS = {"nan": float("nan"), "inf": float("inf"), "big": 1e9, "huge": 1e30}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", list(BAD_ROWS))
def test_bad_rows_never_give_nan(name, bad):
    gen = torch.Generator().manual_seed(5)
    honest = torch.randn(10, 6, generator=gen)
    x = torch.cat([torch.full((1, 6), BAD_ROWS[bad]), honest])
    x[0, 0] = -x[0, 0] if bad != "nan" else x[0, 0]
    v = run(name, x, f=2, server_update=lambda theta, r: honest.mean(dim=0))
    assert torch.isfinite(v.aggregate).all() and torch.isfinite(v.weights).all()
    assert v.aggregate.shape == (6,) and v.weights.shape == (11,)
    if bad in ("nan", "inf"):
        assert v.weights[0] == 0
        assert v.flagged is None or bool(v.flagged[0])
    if v.flagged is not None:
        assert v.flagged.dtype == torch.bool and v.flagged.shape == (11,)
    if name in ("geomed", "centered_clipping"):  # no per-client decision but for NaN/Inf
        if bad in ("nan", "inf"):
            assert v.flagged.tolist() == [True] + [False] * 10
        else:
            assert v.flagged is None
    if name in ("geomed", "bulyan", "centered_clipping"):
        lo, hi = honest.min(dim=0).values, honest.max(dim=0).values
        assert bool(((v.aggregate >= lo) & (v.aggregate <= hi)).all())


def test_non_finite_rows_count_against_f():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(11, 4, generator=gen)
    x[0] = float("nan")
    v = run("bulyan", x, f=2)          # 10 finite rows, f = 2 − 1 → θ = 10 − 2 = 8
    assert int((~v.flagged).sum()) == 8 and bool(v.flagged[0])
    v = run("dnc", x, f=3)             # removes c·(3 − 1) = 2 of the 10 finite rows
    assert int(v.flagged.sum()) == 3 and bool(v.flagged[0])


def test_centered_clipping_keeps_centre_through_an_empty_round():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [-1.0, 0.0]])
    cc = make("centered_clipping", n=3, d=2, tau=1.0)
    first = cc(x, ctx(3, d=2)).aggregate
    empty = cc(torch.full((3, 2), float("nan")), ctx(3, d=2))
    assert close(empty.aggregate, [0.0, 0.0]) and empty.flagged.all()
    again = make("centered_clipping", n=3, d=2, tau=1.0)
    again(x, ctx(3, d=2))
    assert close(cc(x, ctx(3, d=2)).aggregate, again(x, ctx(3, d=2)).aggregate)
    assert not close(first, cc(x, ctx(3, d=2)).aggregate)


@pytest.mark.parametrize("name", ["geomed", "bulyan", "centered_clipping"])
def test_stays_inside_honest_range_with_several_bad_rows(name):
    gen = torch.Generator().manual_seed(6)
    honest = torch.randn(11, 8, generator=gen)
    bad = torch.tensor([[1e9] * 8, [float("nan")] * 8])
    x = torch.cat([bad, honest])
    v = run(name, x, f=2)
    lo, hi = honest.min(dim=0).values, honest.max(dim=0).values
    assert bool(((v.aggregate >= lo) & (v.aggregate <= hi)).all())


@settings(max_examples=30, deadline=None)
@given(n_honest=st.integers(7, 14), d=st.integers(1, 12), seed=st.integers(0, 2**16),
       bad=st.sampled_from([1e9, -1e9, 1e30, float("nan"), float("inf")]),
       n_bad=st.integers(1, 2))
def test_property_bad_rows_stay_outside_the_result(n_honest, d, seed, bad, n_bad):
    gen = torch.Generator().manual_seed(seed)
    honest = torch.randn(n_honest, d, generator=gen, dtype=torch.float64)
    evil = torch.full((n_bad, d), bad, dtype=torch.float64)
    evil[:, ::2] *= -1
    x = torch.cat([evil, honest])
    lo, hi = honest.min(dim=0).values, honest.max(dim=0).values
    for name in ("geomed", "bulyan"):
        v = run(name, x, f=2)
        assert bool(((v.aggregate >= lo - 1e-9) & (v.aggregate <= hi + 1e-9)).all()), name
    # centered clipping: a row moves one iteration by at most τ/m (here from v₀ = 0)
    tau = 1.0
    v = run("centered_clipping", x, f=2, tau=tau)
    clean = x.clone()
    clean[:n_bad] = 0.0                                     # rows sitting at the centre
    m = len(x) if math.isfinite(bad) else n_honest
    ref = run("centered_clipping", clean if math.isfinite(bad) else honest, f=2, tau=tau)
    moved = float((v.aggregate - ref.aggregate).norm())
    assert moved <= n_bad * tau / m + 1e-9 if math.isfinite(bad) else moved <= 1e-9


@pytest.mark.parametrize("name", NAMES)
def test_all_rows_non_finite_and_f_beyond_n(name):
    x = torch.full((5, 3), float("nan"))
    v = run(name, x, f=2, server_update=lambda theta, r: torch.ones(3))
    assert torch.isfinite(v.aggregate).all() and bool((v.weights == 0).all())
    y = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    v = run(name, y, f=9, server_update=lambda theta, r: torch.ones(3))   # f > n: clamp
    assert torch.isfinite(v.aggregate).all()
    v = run(name, y[:1], f=1, server_update=lambda theta, r: torch.ones(3))  # a single client
    assert torch.isfinite(v.aggregate).all()


# -- permutation equivariance --------------------------------------------------------------

@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_permutation_equivariance(name):
    gen = torch.Generator().manual_seed(11)
    x, k = _clear_case(d=40, seed=3)
    x = x + 0.05 * torch.randn(x.shape, generator=gen)
    perm = torch.randperm(len(x), generator=gen)
    u = x[k:].mean(dim=0)
    theta = torch.randn(x.shape[1], generator=gen)

    def verdict(rows, ids):
        c = ctx(len(rows), f=3, d=x.shape[1], ids=ids, global_params=theta)
        return run(name, rows, f=3, server_update=lambda t, r: u, c=c, **DETERMINISTIC[name])

    a = verdict(x, torch.arange(len(x)))
    b = verdict(x[perm], perm)            # client ids travel with their rows
    assert close(a.aggregate, b.aggregate, tol=1e-5)
    assert close(a.weights[perm], b.weights, tol=1e-5)
    if a.flagged is None:
        assert b.flagged is None
    else:
        assert a.flagged[perm].tolist() == b.flagged.tolist()


def test_a_pipeline_scratch_copy_shares_stateless_layers_and_copies_state():
    """A preview's scratch copy of SignGuard: the stateless layers (ecdsa, the anomaly
    filter, Multi-Krum) are shared, the reputation layer is a copy whose table can change
    without touching the real one."""
    from byzbench.defenses.signguard import SignGuard

    sg = SignGuard()
    sg.layers[2].table.set(torch.tensor([0, 1]), torch.tensor([0.9, 0.2], dtype=torch.float64))
    clone = sg._scratch_copy()
    assert clone is not sg and clone.layers is not sg.layers
    for layer, copied in zip(sg.layers, clone.layers):
        assert (copied is layer) == layer.stateless
    clone.layers[2].table.set(torch.tensor([0]), torch.tensor([0.1], dtype=torch.float64))
    assert sg.layers[2].table.get(torch.tensor([0, 1])).tolist() == [0.9, 0.2]
    assert clone.layers[2].table.get(torch.tensor([0])).tolist() == [0.1]
