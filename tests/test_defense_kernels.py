"""The fast defense kernels against their definitions: the same result as the
straightforward formula on random inputs (the benchmarks time them; no test here times)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from byzbench.defenses import geometry
from byzbench.defenses.base import RoundContext
from byzbench.defenses.geometry import coordinate_median, distances_to, row_sq_norms
from byzbench.defenses.sign_statistics import (
    SignStatistics,
    SignStatisticsParams,
    knn_bandwidth,
    sign_features,
)
from byzbench.registry import DEFENSES


def ctx_for(n: int, d: int, f: int = 0) -> RoundContext:
    return RoundContext(round=0, client_ids=torch.arange(n), num_samples=torch.ones(n), f=f,
                        generator=torch.Generator().manual_seed(0),
                        global_params=torch.zeros(d))


@pytest.mark.parametrize("small", [True, False])
@pytest.mark.parametrize("d", [7, 4096, 4097, 10_000])
def test_distances_to_matches_direct_norms(d: int, small: bool, monkeypatch) -> None:
    if not small:
        monkeypatch.setattr(geometry, "SMALL_MATRIX", 0)
    g = torch.Generator().manual_seed(d)
    x = torch.randn(13, d, generator=g) + 3.0
    v = torch.randn(d, generator=g)
    expected = torch.linalg.vector_norm(x.double() - v.double(), dim=1)
    assert torch.allclose(distances_to(x, v), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("small", [True, False])
def test_distances_to_huge_rows_stay_finite(small: bool, monkeypatch) -> None:
    if not small:
        monkeypatch.setattr(geometry, "SMALL_MATRIX", 0)
    x = torch.zeros(3, 5000)
    x[1] = 1e30  # ‖x_1‖² overflows float32
    d = distances_to(x, torch.zeros(5000))
    assert torch.isfinite(d).all()
    assert d[1].item() == pytest.approx(1e30 * 5000 ** 0.5, rel=1e-6)
    assert d[0].item() == 0.0


def topk_closest_reference(s: torch.Tensor, beta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bulyan's coordinate step as El Mhamdi et al. define it: per coordinate the β values
    closest to the median (topk of the distances), their mean, and the chosen rows."""
    keep = torch.topk((s - coordinate_median(s)).abs(), beta, dim=0, largest=False).indices
    return torch.gather(s, 0, keep).mean(dim=0), torch.bincount(keep.reshape(-1),
                                                                 minlength=s.shape[0])


@pytest.mark.parametrize("seed", range(40))
def test_bulyan_window_equals_topk_definition(seed: int, monkeypatch) -> None:
    """The sorted-window kernel picks the same values and counts the same rows as topk,
    also on columns full of ties (zeros, rounded values, signs), odd and even θ."""
    monkeypatch.setattr(geometry, "MEDIAN_BLOCK", 256)  # several blocks, a ragged last one
    g = torch.Generator().manual_seed(seed)
    theta = int(torch.randint(5, 40, (1,), generator=g))
    beta = int(torch.randint(1, theta, (1,), generator=g))
    n = theta + int(torch.randint(0, 5, (1,), generator=g))
    d = int(torch.randint(1, 1200, (1,), generator=g))
    x = torch.randn(n, d, generator=g)
    if seed % 4 == 1:
        x[:, ::3] = 0.0
    elif seed % 4 == 2:
        x = torch.round(x * 2) / 2
    elif seed % 4 == 3:
        x[:, ::2] = x[:, ::2].sign()
    chosen = torch.randperm(n, generator=g)[:theta]
    expected, expected_counts = topk_closest_reference(x[chosen], beta)
    aggregate, counts = geometry.closest_to_median(x, chosen, beta)
    assert torch.allclose(aggregate, expected, rtol=0, atol=1e-6)
    assert torch.equal(counts, expected_counts)


def test_bulyan_hand_computed_column() -> None:
    """θ = 7 (n = 7, f = 0), β = 7 − 0 = 7 → all; with f = 1 (n = 7 = 4f + 3): θ = 5 rows
    chosen by Krum, β = 1: the median of the chosen rows itself."""
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [100.0], [-50.0]])
    v = DEFENSES.get("bulyan")()(x, ctx_for(7, 1, f=1))
    assert v.aggregate.item() == 2.0  # the far rows 100 and −50 are not chosen; median 2
    assert v.weights.sum().item() == pytest.approx(1.0)
    assert v.flagged[5] and v.flagged[6]


@pytest.mark.parametrize("small", [True, False])
def test_geomed_matches_weiszfeld_definition(small: bool, monkeypatch) -> None:
    if not small:
        monkeypatch.setattr(geometry, "SMALL_MATRIX", 0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 9000, generator=g) * 0.01 + 0.002
    x[:6] *= -5.0
    for init in ("median", "mean"):
        out = DEFENSES.get("geomed")(DEFENSES.get("geomed").Params(init=init))(
            x, ctx_for(30, 9000)).aggregate
        v = coordinate_median(x) if init == "median" else x.mean(dim=0)
        for _ in range(5):  # RFA's smoothed Weiszfeld, uniform α, ν = 1e-6
            beta = 1.0 / torch.linalg.vector_norm(x.double() - v.double(), dim=1).clamp(min=1e-6)
            v = ((beta / beta.sum()).double() @ x.double()).float()
        assert torch.allclose(out, v, rtol=0, atol=1e-7)


@pytest.mark.parametrize("small", [True, False])
def test_centered_clipping_matches_definition(small: bool, monkeypatch) -> None:
    if not small:
        monkeypatch.setattr(geometry, "SMALL_MATRIX", 0)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(25, 8000, generator=g) * 0.05
    x[:5] += 3.0
    cls = DEFENSES.get("centered_clipping")
    defense = cls(cls.Params(tau=1.5, iters=3))
    v0 = torch.randn(8000, generator=g) * 0.01
    defense._previous = v0.clone()
    out = defense(x, ctx_for(25, 8000)).aggregate
    v = v0.double()
    for _ in range(3):  # v ← v + mean_i (x_i − v)·min(1, τ/‖x_i − v‖)
        diff = x.double() - v
        v = v + ((1.5 / diff.norm(dim=1)).clamp(max=1.0)[:, None] * diff).mean(dim=0)
    assert torch.allclose(out.double(), v, rtol=0, atol=1e-6)


def sklearn_majority(feats: np.ndarray, quantile: float, cluster_all: bool) -> np.ndarray:
    """The majority cluster as scikit-learn's documented calls give it (the previous code:
    estimate_bandwidth, then MeanShift, default threads)."""
    from sklearn.cluster import MeanShift, estimate_bandwidth
    m = feats.shape[0]
    if np.ptp(feats, axis=0).max() <= 1e-12:
        return np.ones(m, dtype=bool)
    bandwidth = estimate_bandwidth(feats, quantile=quantile)
    if not bandwidth > 0:
        return np.ones(m, dtype=bool)
    labels = MeanShift(bandwidth=bandwidth, bin_seeding=True,
                       cluster_all=cluster_all).fit_predict(feats)
    valid = labels[labels >= 0]
    return labels == np.bincount(valid).argmax() if valid.size else np.ones(m, dtype=bool)


@pytest.mark.parametrize("seed", range(60))
def test_sign_statistics_bandwidth_and_labels_equal_sklearn(seed: int) -> None:
    """knn_bandwidth is estimate_bandwidth's value, and the majority cluster is the same
    on random sign-feature matrices (the features of random rounds with attackers)."""
    from sklearn.cluster import estimate_bandwidth
    rng = np.random.default_rng(seed)
    m = int(rng.integers(5, 60))
    d = int(rng.integers(50, 3000))
    x = torch.from_numpy(rng.standard_normal((m, d)).astype(np.float32))
    f = int(rng.integers(0, m // 2))
    x[:f] = -x[:f].abs() * float(rng.uniform(0.5, 5.0))  # attackers: skewed signs
    if seed % 3 == 0:
        x[:, rng.random(d) < 0.3] = 0.0
    feats = sign_features(x, None).numpy()
    if seed % 5 == 0:
        feats = rng.random((m, 3))
    quantile = float(rng.choice([0.2, 0.3, 0.5, 0.8]))
    assert knn_bandwidth(feats, quantile) == pytest.approx(
        estimate_bandwidth(feats, quantile=quantile), rel=1e-12, abs=1e-15)
    for cluster_all in (False, True):
        p = SignStatisticsParams(bandwidth_quantile=quantile, cluster_all=cluster_all)
        ours = SignStatistics._majority(feats, 0, p)
        assert np.array_equal(ours, sklearn_majority(feats, quantile, cluster_all))


@pytest.mark.parametrize("offset", [0.0, 0.3, 10.0, 1e4])
def test_distances_to_with_center_accurate_under_cancellation(offset: float,
                                                              monkeypatch) -> None:
    """Rows sharing a large common component (offset) and points v near them: the
    expansion would cancel, the kernel recomputes those rows directly."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(20, 5000, generator=g) * 0.01 + offset
    c = x.mean(dim=0)
    v = c + torch.randn(5000, generator=g) * 1e-4
    expected = torch.linalg.vector_norm(x.double() - v.double(), dim=1)
    monkeypatch.setattr(geometry, "SMALL_MATRIX", 0)  # the expansion path at this size
    plain = distances_to(x, v)
    base = distances_to(x, c).square()
    centred = distances_to(x, v, (c, base))
    assert torch.allclose(plain, expected, rtol=1e-6, atol=0)
    assert torch.allclose(centred, expected, rtol=1e-6, atol=0)


def test_row_sq_norms_accurate() -> None:
    g = torch.Generator().manual_seed(8)
    x = torch.randn(4, 300_001, generator=g) * 0.01 + 0.001
    expected = (x.double() ** 2).sum(dim=1)
    assert torch.allclose(row_sq_norms(x), expected, rtol=1e-7, atol=0)
    assert torch.allclose(row_sq_norms(x[:, 1:]), (x[:, 1:].double() ** 2).sum(dim=1),
                          rtol=1e-7, atol=0)  # a strided view


@pytest.mark.parametrize("seed", range(12))
def test_meamed_equals_topk_definition(seed: int, monkeypatch) -> None:
    """MeaMed: per coordinate the mean of the n − f values closest to the median, weights
    each row's share of the chosen values; ties (zeros, rounded values) as topk picks."""
    monkeypatch.setattr(geometry, "MEDIAN_BLOCK", 128)
    g = torch.Generator().manual_seed(100 + seed)
    n, d, f = 9 + seed, 700, seed % 4
    x = torch.randn(n, d, generator=g)
    if seed % 3 == 1:
        x[:, ::4] = 0.0
    elif seed % 3 == 2:
        x = torch.round(x)
    expected, counts = topk_closest_reference(x, n - f)
    v = DEFENSES.get("meamed")()(x, ctx_for(n, d, f=f))
    assert torch.allclose(v.aggregate, expected, rtol=0, atol=1e-6)
    assert torch.allclose(v.weights.double(), counts.double() / counts.sum(), rtol=1e-6)


def test_closest_to_median_restores_torch_threads() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(9, 50)
        geometry.closest_to_median(x, torch.arange(9), 5)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_scale_is_the_inf_norm_with_zero_rows_at_one(dtype) -> None:
    """row_scale (abs().amax) against its definition, vector_norm(ord=inf): bitwise, with
    huge, tiny, zero, negative and non-finite rows."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 257, generator=g).to(dtype)
    x[1] *= 1e30 if dtype == torch.float32 else 1e300
    x[2] *= 1e-30
    x[3] = 0.0
    x[4] = -x[4].abs()
    x[5, 7] = float("nan")
    x[6, 9] = float("-inf")
    inf_norm = torch.linalg.vector_norm(x, ord=float("inf"), dim=1)
    expected = torch.where(inf_norm > 0, inf_norm, torch.ones_like(inf_norm))
    got = geometry.row_scale(x)
    assert got.dtype == dtype
    assert torch.equal(got, expected)
    assert got[3] == 1.0 and got[5] == 1.0 and got[6] == float("inf")   # NaN > 0 is false


def test_cosine_to_a_huge_reference_is_finite_and_exact() -> None:
    """cosine_to scales the reference by its max-abs value: a reference near float32's
    limit gives the cosines of the unscaled vectors."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 100, generator=g)
    ref = torch.randn(100, generator=g)
    expected = geometry.cosine_to(x, ref)
    got = geometry.cosine_to(x, ref * 3e37)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, expected, atol=1e-12)
