"""mean_shift_labels gives scikit-learn's MeanShift(bin_seeding=True) labels exactly: a
property test on random inputs against scikit-learn itself, hand-computed cases, the
floating-point pieces against the scikit-learn / numpy calls they reproduce, and
sign_statistics' verdict against the same round clustered by scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sign_rounds import random_sign_features, sign_statistics_flags

from byzbench.defenses import mean_shift as ms
from byzbench.defenses.mean_shift import mean_shift_labels
from byzbench.defenses.sign_statistics import SignStatisticsParams, knn_bandwidth

sklearn_cluster = pytest.importorskip("sklearn.cluster")

CASES = 360          # seeded inputs, each clustered with cluster_all True and False
CHUNKS = 12


def sklearn_labels(x: np.ndarray, bandwidth, cluster_all: bool) -> np.ndarray | str:
    """scikit-learn's labels, or "ValueError" where it raises one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Binning data failed": seeds = the points
        try:
            return sklearn_cluster.MeanShift(bandwidth=bandwidth, bin_seeding=True,
                                             cluster_all=cluster_all).fit_predict(x)
        except ValueError:
            return "ValueError"


def ours(x: np.ndarray, bandwidth, cluster_all: bool) -> np.ndarray | str:
    try:
        return mean_shift_labels(x, bandwidth, cluster_all)
    except ValueError:
        return "ValueError"


def on_bin_boundary(k: float, bw: float) -> float | None:
    """A float v with v / bw == k + 0.5 exactly (np.round's tie: half to even), if one is
    within a few ulps of (k + 0.5)·bw."""
    v = (k + 0.5) * bw
    for _ in range(4):
        if v / bw == k + 0.5:
            return v
        v = np.nextafter(v, np.inf if v / bw < k + 0.5 else -np.inf)
    return None


def random_case(seed: int) -> tuple[np.ndarray, object, str]:
    """A seeded (features, bandwidth, description): m in 3..40 rows, d in 1..4 features
    (mostly 3), mixtures of 1–4 blobs with random spreads, sometimes duplicated rows,
    discrete (lattice) values, columns scaled like sign_features' (in [0, 1], column maximum
    1) or the sign features of a random round, rows exactly on bin boundaries; the bandwidth
    from knn_bandwidth at a quantile in 0.2..0.8 or random, a Python float or np.float64."""
    rng = np.random.default_rng(seed)
    m = int(rng.integers(3, 41))
    d = int(rng.choice([1, 2, 3, 3, 3, 3, 4]))
    kind = ["blobs", "duplicates", "lattice", "scaled", "sign"][seed % 5]
    if kind == "sign":
        x = random_sign_features(rng, m)
    else:
        k = int(rng.integers(1, 5))
        centres = rng.random((k, d))
        spread = 10.0 ** rng.uniform(-3.0, -0.5, size=k)
        which = rng.integers(0, k, size=m)
        x = centres[which] + rng.standard_normal((m, d)) * spread[which, None]
        if kind == "duplicates":
            x[rng.integers(0, m, size=m // 2)] = x[rng.integers(0, m, size=m // 2)]
        elif kind == "lattice":
            steps = int(rng.integers(3, 25))
            x = np.round(x * steps) / steps
        elif kind == "scaled":
            x = np.abs(x)
            x = x / (x.max(axis=0) + 1e-8)
    x = np.ascontiguousarray(x, dtype=np.float64)
    quantile = float(rng.uniform(0.2, 0.8))
    bw = knn_bandwidth(x, quantile)
    if rng.random() < 0.25 or not bw > 0:
        quantile = float("nan")
        bw = float(10.0 ** rng.uniform(-2.0, 0.0) * max(np.ptp(x), 1e-3))
    if kind in ("lattice", "duplicates") and rng.random() < 0.6:  # rows on bin boundaries
        for i in rng.choice(m, size=max(1, m // 4), replace=False):
            for j in range(d):
                v = on_bin_boundary(float(np.floor(x[i, j] / bw)), bw)
                if v is not None:
                    x[i, j] = v
    if rng.random() < 0.2:
        bw = np.float64(bw)    # float64 seeds: scikit-learn's other first step
    return x, bw, f"seed={seed} kind={kind} m={m} d={d} quantile={quantile:.2f} bw={bw!r}"


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_labels_equal_sklearn_on_random_inputs(chunk: int) -> None:
    for seed in range(chunk, CASES, CHUNKS):
        x, bw, case = random_case(seed)
        for cluster_all in (True, False):
            expected = sklearn_labels(x, bw, cluster_all)
            got = ours(x, bw, cluster_all)
            if isinstance(expected, str) or isinstance(got, str):
                assert isinstance(got, str) and isinstance(expected, str), (case, expected, got)
            else:
                assert got.dtype.kind == "i", case
                assert np.array_equal(got, expected), (case, cluster_all, expected, got)


def test_random_inputs_cover_the_cases() -> None:
    """The generator reaches what the property test is for: brute-force and KD-tree sizes,
    float32 and float64 seeds (bins = points), every kind, exact bin-boundary rows."""
    seen = set()
    for seed in range(CASES):
        x, bw, case = random_case(seed)
        seen.add(case.split()[1])
        seen.add("brute" if len(x) <= 11 else "kd")
        seeds = ms._bin_seeds(x, bw)
        seen.add(str(seeds.dtype))
        seen.add(f"d={x.shape[1]}")
        if (np.round(x / bw) - x / bw == -0.5).any() or (np.round(x / bw) - x / bw == 0.5).any():
            seen.add("boundary")
    assert seen >= {"kind=blobs", "kind=duplicates", "kind=lattice", "kind=scaled",
                    "kind=sign", "brute", "kd", "float32", "float64", "boundary",
                    "d=1", "d=2", "d=3", "d=4"}, seen


# -- hand-computed cases ---------------------------------------------------------------------

@pytest.mark.parametrize("cluster_all", [True, False])
def test_two_clusters_the_larger_is_zero(cluster_all: bool) -> None:
    # bins 0 and 5: the seed 0 climbs to 0.1 (3 points), the seed 5 to 5.05 (2 points)
    x = np.array([[0.0], [0.1], [0.2], [5.0], [5.1]])
    expected = [0, 0, 0, 1, 1]
    assert mean_shift_labels(x, 1.0, cluster_all).tolist() == expected
    assert sklearn_labels(x, 1.0, cluster_all).tolist() == expected


def test_outlier_is_minus_one_unless_cluster_all() -> None:
    # bins 0 and 1; the seed 1.0 has every point within 1 (0 exactly at distance 1), moves
    # to 0.3875, then to 0.05 with 0, 0.05, 0.1: one mode, 1.35 away from the last point
    x = np.array([[0.0], [0.05], [0.1], [1.4]])
    assert mean_shift_labels(x, 1.0, False).tolist() == [0, 0, 0, -1]
    assert mean_shift_labels(x, 1.0, True).tolist() == [0, 0, 0, 0]
    assert sklearn_labels(x, 1.0, False).tolist() == [0, 0, 0, -1]


def test_equal_counts_rank_by_the_larger_centre() -> None:
    # two modes of 2 points each: sorted by (count, centre tuple) descending, (5, 5.1) first
    x = np.array([[0.0, 0.0], [0.0, 0.2], [5.0, 5.0], [5.0, 5.2]])
    assert mean_shift_labels(x, 1.0, True).tolist() == [1, 1, 0, 0]
    assert sklearn_labels(x, 1.0, True).tolist() == [1, 1, 0, 0]


def test_invalid_input_raises_value_error() -> None:
    x = np.array([[0.0], [1.0], [2.0]])
    for bw in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            mean_shift_labels(x, bw, True)
    with pytest.raises(ValueError):
        mean_shift_labels(np.array([[0.0], [np.nan]]), 1.0, True)


# -- the floating-point pieces against what they reproduce -----------------------------------

def test_neighbours_on_the_ball_boundary_match_nearest_neighbors() -> None:
    """Radii equal to (or an ulp off) a row's distance: the radius query's inclusive test on
    scikit-learn's own numbers (KD-tree: Σ(q−x)² vs r·r; brute force: the dgemm expansion,
    or numpy's euclidean_distances for float32 queries)."""
    from sklearn.neighbors import NearestNeighbors
    rng = np.random.default_rng(0)
    methods = set()
    for _ in range(240):
        m = int(rng.choice([4, 8, 11, 12, 20, 40, 60]))
        d = int(rng.integers(1, 5))
        y = rng.random((m, d))
        float32 = bool(rng.random() < 0.5)
        q = rng.random((5, d)).astype(np.float32 if float32 else np.float64)
        r = float(np.sqrt(((q[0].astype(np.float64) - y[rng.integers(0, m)]) ** 2).sum()))
        if rng.random() < 0.5:
            r = float(np.nextafter(r, np.inf if rng.random() < 0.5 else 0.0))
        nn = NearestNeighbors(radius=r).fit(y)
        methods.add((nn._fit_method, float32))
        expected = np.zeros((len(q), m), dtype=bool)
        for i in range(len(q)):
            expected[i, nn.radius_neighbors([q[i]], r, return_distance=False)[0]] = True
        got = ms._within(q.astype(np.float64), y, r, r, float32_query=float32)
        assert np.array_equal(got, expected), (m, d, float32, r)
    assert len(methods) == 4


def test_kd_tree_box_corner_admits_the_whole_leaf() -> None:
    """A ball whose farthest row is the bounding box's corner, with sqrt(Σ) == r but
    Σ > r·r: the KD-tree takes every row by the box test (in distance, not squared)."""
    from sklearn.neighbors import NearestNeighbors
    rng = np.random.default_rng(1)
    tried = 0
    for _ in range(200):
        m, d = int(rng.integers(12, 61)), int(rng.integers(2, 5))
        y = rng.random((m, d))
        y[0] = 1.0
        q = rng.random((1, d)) * 0.2
        s = ms._rdist(q, y[:1])[0, 0]
        r = float(np.sqrt(s))
        if not r * r < s:
            continue
        tried += 1
        expected = np.zeros(m, dtype=bool)
        expected[NearestNeighbors(radius=r).fit(y).radius_neighbors(
            q, r, return_distance=False)[0]] = True
        assert expected.all()
        assert ms._within(q, y, r, r, float32_query=False)[0].all()
    assert tried >= 20


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_neighbour_means_are_numpys_means(d: int) -> None:
    """np.mean over the neighbours, bit for bit: sequential for d ≥ 2, numpy's pairwise
    summation (blocks of 8, halves above 128) for d = 1."""
    rng = np.random.default_rng(d)
    for m in (5, 9, 40, 130, 300):
        x = rng.random((m, d)) * 10.0 ** rng.integers(-6, 7, size=(m, 1))
        within = rng.random((7, m)) < rng.random((7, 1))
        within[:, 0] = True
        n = within.sum(axis=1)
        expected = np.stack([np.mean(x[w], axis=0) for w in within])
        assert np.array_equal(ms._neighbour_means(within, x, n), expected), m


def test_suppression_is_sklearns_loop() -> None:
    """The fixed point equals scikit-learn's loop, for asymmetric neighbour relations too."""
    rng = np.random.default_rng(2)
    for _ in range(300):
        n = int(rng.integers(1, 12))
        near = rng.random((n, n)) < rng.random()
        np.fill_diagonal(near, True)
        unique = np.ones(n, dtype=bool)
        for i in range(n):
            if unique[i]:
                unique[near[i]] = False
                unique[i] = True
        assert np.array_equal(ms._suppress(near), unique)


# -- the defense end to end ------------------------------------------------------------------

@pytest.mark.parametrize("cluster_all", [False, True])
def test_sign_statistics_verdict_equals_sklearns(cluster_all: bool) -> None:
    p = SignStatisticsParams(cluster_all=cluster_all)

    def sklearn_meanshift(feats: np.ndarray, _: int) -> np.ndarray:
        return sklearn_labels(feats, knn_bandwidth(feats, p.bandwidth_quantile), p.cluster_all)

    split_by_sign = 0
    for seed in range(8):
        flagged, expected, by_sign = sign_statistics_flags(p, seed, sklearn_meanshift)
        assert torch.equal(flagged, expected), seed
        split_by_sign += int(not by_sign.all())
    assert split_by_sign >= 4                       # the clustering decided something                       # the clustering decided something
