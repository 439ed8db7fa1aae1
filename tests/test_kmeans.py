"""kmeans_labels gives scikit-learn's KMeans labels exactly: a property test on random inputs
against scikit-learn itself (labels, and the inertia and centres behind them, bit for bit),
hand-computed cases, each step against the scikit-learn function it reproduces, and the
clustering and sign_statistics verdicts against the same rounds clustered by scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sign_rounds import random_sign_features, sign_statistics_flags

from byzbench.defenses import kmeans as km
from byzbench.defenses.base import DefenseSetup, RoundContext
from byzbench.defenses.clustering import Clustering, ClusteringParams, exact_coordinates
from byzbench.defenses.kmeans import kmeans_labels
from byzbench.defenses.sign_statistics import SignStatisticsParams

sklearn_cluster = pytest.importorskip("sklearn.cluster")

CASES = 360
CHUNKS = 12
KINDS = ("coords", "cosine", "sign", "blobs", "duplicates", "few", "lattice")


def sklearn_fit(x: np.ndarray, k: int, n_init: int, seed: int, threads: int = 1):
    """scikit-learn's fit on ``threads`` OpenMP threads (kmeans_labels' default: 1)."""
    from threadpoolctl import threadpool_limits
    with warnings.catch_warnings(), threadpool_limits(threads, user_api="openmp"):
        warnings.simplefilter("ignore")  # ConvergenceWarning: fewer distinct points than k
        return sklearn_cluster.KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x)


def updates_with_attackers(rng: np.random.Generator, m: int) -> torch.Tensor:
    """[m, d] float32 updates: honest noise around a common drift, f attackers in a tight,
    scaled, shifted group (f may be 0)."""
    d = int(rng.integers(50, 2000))
    u = torch.from_numpy(rng.standard_normal((m, d)).astype(np.float32)) * 0.01
    u += float(rng.uniform(-0.01, 0.01))
    f = int(rng.integers(0, m // 2 + 1))
    if f:
        u[:f] = (u[:f] * float(rng.uniform(0.05, 1.0))
                 + float(rng.uniform(-0.05, 0.05)) * float(rng.choice([1.0, 10.0])))
    return u


def random_case(seed: int) -> tuple[np.ndarray, int, int, int, str]:
    """A seeded (X, k, n_init, random_state, description): m in 3..60 rows; [m, m] exact
    coordinates (euclidean or cosine) of random update matrices with an attacker group,
    [m, 3] sign features, or d in 1..30 features: blobs of random spreads, duplicated rows,
    fewer distinct rows than k, lattice values; k in 2..5, n_init in {1, 3, 10},
    random_state anywhere in [0, 2³²)."""
    rng = np.random.default_rng(seed)
    kind = KINDS[seed % len(KINDS)]
    m = int(rng.integers(3, 61))
    d = int(rng.integers(1, 31))
    k = int(rng.integers(2, 6))
    if kind in ("coords", "cosine"):
        x = exact_coordinates(updates_with_attackers(rng, m),
                              "cosine" if kind == "cosine" else "euclidean")
    elif kind == "sign":
        x = random_sign_features(rng, m)
    else:
        blobs = int(rng.integers(1, 6))
        centres = rng.standard_normal((blobs, d)) * rng.uniform(0.5, 5.0)
        spread = 10.0 ** rng.uniform(-3.0, 0.0, size=blobs)
        which = rng.integers(0, blobs, size=m)
        x = centres[which] + rng.standard_normal((m, d)) * spread[which, None]
        if kind == "duplicates":
            x[rng.integers(0, m, size=m // 2)] = x[rng.integers(0, m, size=m // 2)]
        elif kind == "few":                     # 1..k-1 distinct rows (ConvergenceWarning)
            distinct = int(rng.integers(1, min(k, m)))
            x = x[rng.integers(0, distinct, size=m)]
        elif kind == "lattice":
            x = np.round(x * int(rng.integers(1, 4))) / 3
    k = min(k, len(x))
    n_init = int(rng.choice([1, 3, 10]))
    random_state = int(rng.integers(0, 2**32))
    x = np.ascontiguousarray(x, dtype=np.float64)
    return x, k, n_init, random_state, (f"seed={seed} kind={kind} shape={x.shape} k={k} "
                                        f"n_init={n_init} random_state={random_state}")


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_labels_equal_sklearn_on_random_inputs(chunk: int) -> None:
    for seed in range(chunk, CASES, CHUNKS):
        x, k, n_init, random_state, case = random_case(seed)
        expected = sklearn_fit(x, k, n_init, random_state)
        got = kmeans_labels(x, k, n_init, random_state)
        assert got.dtype == expected.labels_.dtype, case
        assert np.array_equal(got, expected.labels_), (case, expected.labels_, got)
        # the numbers behind the labels, bit for bit
        _, inertia, centers = km._kmeans(x, k, n_init, random_state)
        assert inertia == expected.inertia_, case
        assert np.array_equal(centers, expected.cluster_centers_), case


def test_random_inputs_cover_the_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    """The generator reaches what the property test is for: every kind, one feature, more
    features than 4 (the unrolled distance's blocks), every k and n_init, fewer distinct rows
    than k, empty clusters relocated and left in place (every row on its centre), restarts
    replacing the best and restarts skipped as the same clustering."""
    seen: set[str] = set()
    relocate, average, same = (km._relocate_empty_clusters, km._average_centers,
                               km._same_clustering)

    def spy_relocate(x, old, new, counts, labels):
        seen.add("relocated" if ((x - old[labels]) ** 2).sum(axis=1).max() > 0
                 else "not relocated")
        relocate(x, old, new, counts, labels)

    def spy_average(centers, counts):
        if (counts == 0).any():
            seen.add("empty copies the heaviest")
        average(centers, counts)

    def spy_same(a, b, k):
        result = same(a, b, k)
        seen.add(f"same clustering {result}")
        return result

    monkeypatch.setattr(km, "_relocate_empty_clusters", spy_relocate)
    monkeypatch.setattr(km, "_average_centers", spy_average)
    monkeypatch.setattr(km, "_same_clustering", spy_same)
    for seed in range(CASES):
        x, k, n_init, random_state, case = random_case(seed)
        seen.add(case.split()[1])
        seen.add("d=1" if x.shape[1] == 1 else "d>4" if x.shape[1] > 4 else "d<=4")
        seen.add(f"k={k}")
        seen.add(f"n_init={n_init}")
        if len(np.unique(x, axis=0)) < k:
            seen.add("fewer distinct rows than k")
        kmeans_labels(x, k, n_init, random_state)
    assert seen >= {*(f"kind={kind}" for kind in KINDS), "d=1", "d<=4", "d>4",
                    "k=2", "k=3", "k=4", "k=5", "n_init=1", "n_init=3", "n_init=10",
                    "fewer distinct rows than k", "relocated", "not relocated",
                    "empty copies the heaviest", "same clustering True",
                    "same clustering False"}, seen


def test_wider_shapes_and_thread_counts() -> None:
    """Beyond the defenses' sizes: more than one 256-row chunk (the centre sums of two
    OpenMP threads), up to 64 clusters and 100 features, with one and two threads."""
    rng = np.random.default_rng(11)
    for m, d, k, threads in ((300, 7, 3, 2), (600, 2, 9, 2), (520, 40, 4, 1), (100, 100, 64, 2),
                             (90, 33, 16, 1), (257, 1, 2, 2)):
        centres = rng.standard_normal((k, d)) * 3
        x = centres[rng.integers(0, k, m)] + rng.standard_normal((m, d))
        seed = int(rng.integers(0, 2**32))
        expected = sklearn_fit(x, k, 5, seed, threads)
        labels, inertia, centers = km._kmeans(x, k, 5, seed, threads)
        assert np.array_equal(labels, expected.labels_), (m, d, k)
        assert inertia == expected.inertia_, (m, d, k)
        assert np.array_equal(centers, expected.cluster_centers_), (m, d, k)


# -- hand-computed cases ---------------------------------------------------------------------

def test_two_obvious_clusters_numbered_by_the_first_centre() -> None:
    # The first centre is row searchsorted([.2, .4, .6, .8, 1], u, "right") for u the
    # RandomState's first double; the second is drawn ∝ squared distance, so from the other
    # group (its two trials land there with probability > 0.999). Label 0 is the group of
    # the first centre; Lloyd then converges at once to the group means.
    x = np.array([[0.0], [0.1], [0.2], [10.0], [10.1]])
    assert np.random.RandomState(0).random_sample() < 0.6        # 0.549: row 2
    assert np.random.RandomState(4).random_sample() > 0.8        # 0.967: row 4
    assert kmeans_labels(x, 2, 1, 0).tolist() == [0, 0, 0, 1, 1]
    assert kmeans_labels(x, 2, 1, 4).tolist() == [1, 1, 1, 0, 0]
    assert sklearn_fit(x, 2, 1, 4).labels_.tolist() == [1, 1, 1, 0, 0]
    # inertia: 0.1² + 0 + 0.1² (around 0.1) + 2·0.05² (around 10.05) = 0.025
    _, inertia, centers = km._kmeans(x, 2, 10, 0)
    assert inertia == pytest.approx(0.025)
    assert np.allclose(centers[:, 0], [0.1, 10.05])


def test_fewer_distinct_rows_than_clusters() -> None:
    # two distinct rows, k = 3: the third seed has zero potential, so every candidate is
    # row 0; a cluster stays empty and, every row sitting on its centre, is not relocated
    # but copies the heaviest centre. scikit-learn warns (ConvergenceWarning); same labels.
    x = np.array([[1.0, 2.0]] * 3 + [[4.0, -1.0]] * 2)
    for seed in range(20):
        expected = sklearn_fit(x, 3, 3, seed).labels_
        got = kmeans_labels(x, 3, 3, seed)
        assert np.array_equal(got, expected), seed
        assert len(set(got[:3])) == 1 and len(set(got[3:])) == 1 and got[0] != got[3]


def test_invalid_input_raises_value_error() -> None:
    with pytest.raises(ValueError, match="n_samples=2 should be >= n_clusters=3"):
        kmeans_labels(np.zeros((2, 2)), 3, 1, 0)
    with pytest.raises(ValueError):
        kmeans_labels(np.array([[0.0], [np.nan], [1.0]]), 2, 1, 0)
    with pytest.raises(ValueError):
        kmeans_labels(np.zeros((0, 2)), 2, 1, 0)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scikit-learn's own overflows
def test_overflowing_input_goes_to_sklearn() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 3)) * 1e160
    assert np.array_equal(kmeans_labels(x, 2, 10, 5), sklearn_fit(x, 2, 10, 5).labels_)


# -- each step against the scikit-learn function it reproduces -------------------------------

def test_random_state_and_draws_are_sklearns() -> None:
    """A re-seeded RandomState is RandomState(seed); one random_sample call gives the draws
    of choice(n, p=uniform) and uniform(size=t) in sequence."""
    for seed in (0, 1, 12345, 2**31 - 1, 2**32 - 1):
        rs = km._random_state(seed)
        assert np.array_equal(rs.random_sample(50), np.random.RandomState(seed).random_sample(50))
    for seed in range(30):
        n, t, k = 3 + seed, 2 + seed % 3, 2 + seed % 4
        p = np.ones(n) / n
        ref = np.random.RandomState(seed)
        rs = km._random_state(seed)
        cdf = p.cumsum()
        cdf /= cdf[-1]
        for _ in range(3):
            u = rs.random_sample(1 + (k - 1) * t)
            assert ref.choice(n, p=p) == cdf.searchsorted(u[0], side="right")
            for c in range(1, k):
                assert np.array_equal(ref.uniform(size=t), u[1 + (c - 1) * t:1 + c * t])


def test_seeding_is_sklearns_kmeans_plusplus() -> None:
    """The restarts' seeds, all at once, equal scikit-learn's _kmeans_plusplus called once
    per restart on one RandomState (centres bit for bit)."""
    from sklearn.cluster._kmeans import _kmeans_plusplus
    for seed in range(60):
        x, k, n_init, random_state, case = random_case(seed)
        x = x - x.mean(axis=0)
        x_sq = np.einsum("ij,ij->i", x, x)
        ref = np.random.RandomState(random_state)
        expected = np.stack([_kmeans_plusplus(x, k, x_sq, np.ones(len(x)), ref)[0]
                             for _ in range(n_init)])
        got = km._kmeans_plusplus(x, x_sq, k, n_init, km._random_state(random_state))
        assert np.array_equal(got, expected), case


def lloyd_cases():
    # every row on a centre, cluster 1 empty (it duplicates centre 0, which wins the ties):
    # no relocation, and the empty centre copies the heaviest cluster's (2) row before that
    # row is averaged: its sum, 3·b
    a, b = [1.0, -2.0, 0.5], [-0.5, 1.0, 2.0]
    yield np.array([a, b, a, b, b]), np.array([a, a, b]), 1
    rng = np.random.default_rng(5)
    for i in range(40):
        m = int(rng.choice([3, 20, 60, 256, 300, 513]))
        d = int(rng.integers(1, 40))
        k = int(min(m, rng.integers(2, 7)))
        x = rng.standard_normal((m, d))
        if i % 4 == 1:
            x = x[rng.integers(0, max(1, k - 1), size=m)]  # fewer distinct rows than k
        x = np.ascontiguousarray(x - x.mean(axis=0))
        centers = x[rng.choice(m, size=k, replace=False)] + rng.standard_normal((k, d)) * 0.1
        if i % 4 == 2:
            centers[0] += 100.0                             # an empty cluster: relocated
        yield x, np.ascontiguousarray(centers), int(rng.choice([1, 2]))


def test_lloyd_step_is_sklearns_lloyd_iter() -> None:
    """One Lloyd step (labels, new centres with relocation and averaging, centre shifts)
    equals lloyd_iter_chunked_dense bit for bit, one or several chunks, one or two threads."""
    from sklearn.cluster._k_means_lloyd import lloyd_iter_chunked_dense
    for x, centers, threads in lloyd_cases():
        n, k = len(x), len(centers)
        centers_new = np.zeros_like(centers)
        labels = np.full(n, -1, dtype=np.int32)
        shift = np.zeros(k)
        lloyd_iter_chunked_dense(x, np.ones(n), centers, centers_new, np.zeros(k), labels,
                                 shift, threads)
        got_labels, got_new, got_shift = km._lloyd_step(x, centers[None],
                                                        km._Chunks.of(n, threads))
        assert np.array_equal(got_labels[0], labels)
        assert np.array_equal(got_new[0], centers_new)
        assert np.array_equal(got_shift[0], shift)


def test_inertia_and_distances_are_sklearns() -> None:
    """The unrolled squared distance is _euclidean_dense_dense; the inertia is _inertia_dense
    (static thread shares, partial sums in thread order) for one and two threads."""
    from sklearn.cluster._k_means_common import _euclidean_dense_dense_wrapper, _inertia_dense
    rng = np.random.default_rng(6)
    for d in range(1, 14):
        a, b = rng.standard_normal((2, d)) * 10.0 ** rng.integers(-5, 6, size=(2, d))
        assert km._sq_dist_unrolled(a, b) == _euclidean_dense_dense_wrapper(a, b, True)
    for x, centers, threads in lloyd_cases():
        labels = rng.integers(0, len(centers), size=len(x)).astype(np.int32)
        expected = _inertia_dense(x, np.ones(len(x)), centers, labels, threads)
        assert km._inertia(x, centers[None], labels[None], threads)[0] == expected


@pytest.mark.parametrize("k", [2, 5, 8, 9, 17, 64])
def test_total_shift_sums_rows_as_a_vector_sum(k: int) -> None:
    """``np.sum(shift ** 2, axis=1)`` over restarts equals each restart's
    ``(center_shift ** 2).sum()`` (numpy's pairwise summation per row)."""
    rng = np.random.default_rng(k)
    shift = rng.random((10, k)) * 10.0 ** rng.integers(-8, 8, size=(10, k))
    rows = np.sum(shift ** 2, axis=1)
    assert all(rows[i] == (shift[i] ** 2).sum() for i in range(10))


# -- the defenses end to end -----------------------------------------------------------------

def round_ctx(m: int, d: int, seed: int) -> RoundContext:
    return RoundContext(round=0, client_ids=torch.arange(m), num_samples=torch.ones(m), f=0,
                        generator=torch.Generator().manual_seed(seed),
                        global_params=torch.zeros(d))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_clustering_verdict_equals_sklearns(metric: str) -> None:
    split = 0
    for seed in range(8):
        rng = np.random.default_rng(200 + seed)
        m = 20 if seed % 2 else int(rng.integers(5, 40))
        x = updates_with_attackers(rng, m)
        p = ClusteringParams(metric=metric, n_clusters=2 + seed % 3)
        defense = Clustering(p)
        defense.setup(DefenseSetup(num_clients=m, clients_per_round=m, f=0, dim=x.shape[1],
                                   seed=0, device=torch.device("cpu")))
        verdict = defense(x, round_ctx(m, x.shape[1], seed))
        # the same coordinates, and the same draw from the round's generator, to scikit-learn
        g = torch.Generator().manual_seed(seed)
        random_state = int(torch.randint(0, 2**31 - 1, (1,), generator=g).item())
        labels = sklearn_fit(exact_coordinates(x, metric), min(p.n_clusters, m), p.n_init,
                             random_state).labels_
        keep = labels == Clustering._largest(labels, x)
        assert torch.equal(verdict.flagged, torch.from_numpy(~keep)), seed
        assert np.array_equal(verdict.diagnostics["cluster"].numpy(), labels), seed
        split += int(not keep.all())
    assert split == 8


def test_sign_statistics_kmeans_verdict_equals_sklearns() -> None:
    p = SignStatisticsParams(clusterer="kmeans")
    split_by_sign = 0
    for seed in range(8):
        flagged, expected, by_sign = sign_statistics_flags(
            p, seed, lambda feats, rs: sklearn_fit(feats, min(p.n_clusters, len(feats)), 10,
                                                   rs).labels_)
        assert torch.equal(flagged, expected), seed
        split_by_sign += int(not by_sign.all())
    assert split_by_sign >= 4
