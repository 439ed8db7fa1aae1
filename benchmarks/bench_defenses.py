"""Aggregation time per defense at n ∈ {20, 100} clients and d ∈ {10⁴, 10⁶} parameters.

Every registered defense that can run (its ``requirement`` allows n and f) is constructed
with default parameters and timed on random updates with f = 20 % attackers (shifted rows),
median wall time of a few repetitions after one warm-up call. Defenses that verify
signatures get real signed messages (signing is not timed; verification is, as part of the
defense). Beside the vectorised Krum and Multi-Krum, a per-pair Python-loop implementation
(one torch op per client pair, scores by Python sorting) is timed in the same run and the
ratio printed. Target: krum / multikrum at n=100, d=10⁶ ≤ 1.5 s.

``--references`` times, instead of that table, each aggregator against a straightforward
vectorised torch implementation of its paper's definition (:data:`REFERENCES`: one
``torch.cdist`` for the pairwise distances, ``torch.sort`` along dim 0 for order
statistics, ``x − v`` and ``vector_norm`` for Weiszfeld and centred clipping; no Python
loop over clients or coordinates), in the same run: interleaved repetitions, medians,
the ratio and the largest |difference| of the aggregates. Target: ours ≥ 3× faster at
n = 100, d = 10⁶ with the aggregates equal to 1e-5.

    python benchmarks/bench_defenses.py                 # the full table (≈ 2–3 min)
    python benchmarks/bench_defenses.py --only krum multikrum median --sizes 20x10000
    python benchmarks/bench_defenses.py --references    # ours vs references, n=100, d=1e6
    python benchmarks/bench_defenses.py --references --threads 1   # as a cell runs them
    python benchmarks/bench_defenses.py --clustering    # sign_statistics' clustering per round
    python benchmarks/bench_defenses.py --meanshift     # MeanShift: scikit-learn vs ours
    python benchmarks/bench_defenses.py --kmeans        # KMeans: scikit-learn vs ours
    python benchmarks/bench_defenses.py --kernels       # small kernels vs what they replaced

``--meanshift`` times scikit-learn's ``MeanShift(bin_seeding=True).fit_predict`` against
:func:`byzbench.defenses.mean_shift.mean_shift_labels` on the sign features of random
rounds (m = 20 and 100 rows by default), interleaved, one torch thread: medians, the ratio,
and whether the labels are equal (cluster_all false, timed, and true).

``--kmeans`` times scikit-learn's ``KMeans(n_clusters=2, n_init=10, random_state=seed)
.fit(coords).labels_``, called as the clustering defense called it (inside
``lean_sklearn``), against :func:`byzbench.defenses.kmeans.kmeans_labels` on the
``[m, m]`` exact coordinates of random rounds (m = 20 and 100 rows by default; the
digits model's 4,810 parameters at m = 20), interleaved, one torch thread: medians, the
ratio, and whether the labels are equal.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable

import torch

from byzbench.crypto import ClientKeyring
from byzbench.defenses.base import DefenseSetup, RoundContext
from byzbench.registry import DEFENSES

TARGET_S = 1.5
REFERENCE_TARGET = 3.0
REFERENCE_TOL = 1e-5


def loop_krum(x: torch.Tensor, f: int, m: int = 1) -> tuple[torch.Tensor, list[int]]:
    """Reference Krum / Multi-Krum with a Python loop over client pairs (what the vectorised
    version replaces): ‖x_i − x_j‖² per pair, scores = sum of the n − f − 2 smallest."""
    n = x.shape[0]
    dist = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            dij = float(((x[i] - x[j]) ** 2).sum())
            dist[i][j] = dist[j][i] = dij
    k = max(n - f - 2, 1)
    scores = [sum(sorted(dist[i][j] for j in range(n) if j != i)[:k]) for i in range(n)]
    chosen = sorted(range(n), key=lambda i: scores[i])[:m]
    return x[chosen].mean(dim=0), chosen


def make_round(n: int, d: int, f: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * 0.01 + 0.001
    x[:f] = -5.0 * x[:f]  # attackers: scaled sign flip
    return x


def time_call(fn: Callable[[], object], reps: int, budget_s: float
              ) -> tuple[float, int, object]:
    """Median seconds of ``reps`` calls after one warm-up call; when the warm-up call alone
    shows that ``reps`` calls would exceed ``budget_s``, that one call is the measurement.
    Returns (seconds, timed calls, the last call's result)."""
    start = time.perf_counter()
    result = fn()
    first = time.perf_counter() - start
    if first * reps > budget_s:
        return first, 1, result
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), reps, result


def run_round(defense, x: torch.Tensor, f: int, messages, nonce: bytes):
    n, d = x.shape
    ctx = RoundContext(round=0, client_ids=torch.arange(n), num_samples=torch.ones(n), f=f,
                       generator=torch.Generator().manual_seed(2),
                       global_params=torch.zeros(d), messages=messages, nonce=nonce)
    return defense(x, ctx)


def run_alternately(calls: list[tuple[str, Callable[[], object], list[float]]], r: int
                    ) -> dict[str, object]:
    """Each call once, in reverse order on every other repetition ``r`` (so neither side
    always goes first); each one's seconds appended to its list; the results by name."""
    got = {}
    for key, fn, acc in calls[::1 if r % 2 else -1]:
        start = time.perf_counter()
        got[key] = fn()
        acc.append(time.perf_counter() - start)
    return got


def ratio(t: dict[str, float], a: str, b: str) -> str:
    return f"{t[a] / t[b]:7.1f}x" if a in t and b in t else "       —"


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1e3:9.1f}"


# --- straightforward references: each paper's definition, plainly vectorised in torch ------

def ref_median(x: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median (Yin et al. 2018): sort each column, middle value (mean of
    the two middle values for even n)."""
    n = x.shape[0]
    s = torch.sort(x, dim=0).values
    return s[n // 2].clone() if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def ref_trimmed_mean(x: torch.Tensor, b: int) -> torch.Tensor:
    """Coordinate-wise trimmed mean (Yin et al. 2018): sort each column, drop b at each end."""
    n = x.shape[0]
    return torch.sort(x, dim=0).values[b:n - b].mean(dim=0)


def ref_krum_scores(d2: torch.Tensor, f: int, available: torch.Tensor) -> torch.Tensor:
    """Krum scores (Blanchard et al. 2017) among ``available`` rows: the sum of the
    r − f − 2 smallest squared distances to other available rows; +inf elsewhere."""
    r = int(available.sum())
    k = max(r - f - 2, 1)
    masked = d2.masked_fill(~available[None, :], float("inf"))
    masked.fill_diagonal_(float("inf"))
    scores = torch.topk(masked, k, dim=1, largest=False).values.sum(dim=1)
    return torch.where(available, scores, torch.full_like(scores, float("inf")))


def ref_sq_dist(x: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, x).double() ** 2


def ref_krum(x: torch.Tensor, f: int) -> torch.Tensor:
    n = x.shape[0]
    scores = ref_krum_scores(ref_sq_dist(x), f, torch.ones(n, dtype=torch.bool))
    return x[torch.argmin(scores)]


def ref_multikrum(x: torch.Tensor, f: int) -> torch.Tensor:
    n = x.shape[0]
    scores = ref_krum_scores(ref_sq_dist(x), f, torch.ones(n, dtype=torch.bool))
    return x[torch.argsort(scores)[:n - f]].mean(dim=0)


def ref_geomed(x: torch.Tensor, init: str = "median", iters: int = 5,
               nu: float = 1e-6) -> torch.Tensor:
    """RFA's smoothed Weiszfeld (Pillutla et al. 2022), uniform α: v ← Σ β_i x_i / Σ β_i,
    β_i = 1 / max(ν, ‖v − x_i‖), from the coordinate median (or the mean)."""
    v = ref_median(x) if init == "median" else x.mean(dim=0)
    for _ in range(iters):
        dist = torch.linalg.vector_norm(x - v, dim=1).double()
        beta = 1.0 / dist.clamp(min=nu)
        v = (beta / beta.sum()).to(x.dtype) @ x
    return v


def ref_centered_clipping(x: torch.Tensor, v0: torch.Tensor, tau: float = 10.0,
                          iters: int = 1) -> torch.Tensor:
    """Centred clipping (Karimireddy et al. 2021): v ← v + mean_i (x_i − v)·min(1, τ/‖x_i − v‖)."""
    v = v0
    m = x.shape[0]
    for _ in range(iters):
        diff = x - v
        scale = (tau / torch.linalg.vector_norm(diff, dim=1)).clamp(max=1.0)
        v = v + (scale / m) @ diff
    return v


def ref_bulyan(x: torch.Tensor, f: int) -> torch.Tensor:
    """Bulyan (El Mhamdi et al. 2018): θ = n − 2f recursive Krum picks, then per coordinate
    the mean of the β = θ − 2f selected values closest to the coordinate median."""
    n = x.shape[0]
    theta, beta = n - 2 * f, n - 4 * f
    d2 = ref_sq_dist(x)
    available = torch.ones(n, dtype=torch.bool)
    chosen = []
    for _ in range(theta):  # sequential by definition, on the [n, n] matrix
        pick = int(torch.argmin(ref_krum_scores(d2, f, available)))
        chosen.append(pick)
        available[pick] = False
    s = x[chosen]
    idx = torch.topk((s - ref_median(s)).abs(), beta, dim=0, largest=False).indices
    return torch.gather(s, 0, idx).mean(dim=0)


# name → (defense parameters, reference(x, f, v0)); v0: centred clipping's previous centre
REFERENCES: dict[str, tuple[dict, Callable[..., torch.Tensor]]] = {
    "krum": ({}, lambda x, f, v0: ref_krum(x, f)),
    "multikrum": ({}, lambda x, f, v0: ref_multikrum(x, f)),
    "median": ({}, lambda x, f, v0: ref_median(x)),
    "trimmed_mean": ({}, lambda x, f, v0: ref_trimmed_mean(x, f)),
    "geomed": ({}, lambda x, f, v0: ref_geomed(x)),
    "geomed (init=mean)": ({"init": "mean"}, lambda x, f, v0: ref_geomed(x, "mean")),
    "centered_clipping": ({}, lambda x, f, v0: ref_centered_clipping(x, v0)),
    "centered_clipping (L=3)": ({"iters": 3},
                                lambda x, f, v0: ref_centered_clipping(x, v0, iters=3)),
    "bulyan": ({}, lambda x, f, v0: ref_bulyan(x, f)),
}


def run_references(n: int, d: int, names: list[str], reps: int, budget: float) -> None:
    """Ours vs the straightforward reference, interleaved, in one run; prints the table."""
    f = n // 5
    x = make_round(n, d, f)
    v0 = torch.randn(d, generator=torch.Generator().manual_seed(3)) * 0.01
    print(f"n={n}, d={d:.0e}, f={f}: ours (the registered defense, default parameters "
          f"unless named) vs a straightforward torch implementation of the paper's definition; "
          f"median of interleaved repetitions", flush=True)
    print(f"{'defense':<26}{'ours ms':>10}{'ref ms':>11}{'ratio':>8}{'max |diff|':>12}"
          f"{'reps':>6}  verdict")
    misses = []
    for label in names:
        params, ref = REFERENCES[label]
        cls = DEFENSES.get(label.split(" ")[0])
        defense = cls(cls.Params(**params))
        defense.setup(DefenseSetup(num_clients=n, clients_per_round=n, f=f, dim=d, seed=0,
                                   device=torch.device("cpu")))

        def ours(defense=defense) -> torch.Tensor:
            if hasattr(defense, "_previous"):
                defense._previous = v0  # centred clipping: the same previous centre each call
            return run_round(defense, x, f, None, b"").aggregate

        def theirs(ref=ref) -> torch.Tensor:
            return ref(x, f, v0)

        t_ours, t_ref = [], []
        a = ours()
        start = time.perf_counter()
        b = theirs()
        first_ref = time.perf_counter() - start
        diff = float((a.double() - b.double()).abs().max())
        rounds = 1 if first_ref * reps > budget else reps
        for _ in range(rounds):
            for fn, acc in ((ours, t_ours), (theirs, t_ref)):
                start = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - start)
        mo, mr = statistics.median(t_ours), statistics.median(t_ref)
        ok = mr / mo >= REFERENCE_TARGET and diff <= REFERENCE_TOL
        if not ok:
            misses.append(label)
        print(f"{label:<26}{fmt(mo):>10}{fmt(mr):>11}{mr / mo:>7.1f}x{diff:>12.1e}"
              f"{rounds:>6}  {'meets' if ok else 'MISSES'}", flush=True)
    print(f"target: ≥ {REFERENCE_TARGET:.0f}x faster, max |diff| ≤ {REFERENCE_TOL:.0e}; "
          f"{'all met' if not misses else 'missed: ' + ', '.join(misses)}")


def previous_majority(feats, p) -> object:
    """sign_statistics' clustering as it was: scikit-learn's estimate_bandwidth, then
    MeanShift (or KMeans, n_init=10), with scikit-learn's default OpenMP threads."""
    import numpy as np
    from sklearn.cluster import KMeans, MeanShift, estimate_bandwidth
    m = feats.shape[0]
    if p.clusterer == "kmeans":
        labels = KMeans(n_clusters=min(p.n_clusters, m), n_init=10,
                        random_state=0).fit_predict(feats)
    else:
        bandwidth = estimate_bandwidth(feats, quantile=p.bandwidth_quantile, random_state=0)
        labels = MeanShift(bandwidth=bandwidth, bin_seeding=True,
                           cluster_all=p.cluster_all).fit_predict(feats)
    valid = labels[labels >= 0]
    return labels == np.bincount(valid).argmax()


def run_clustering(sizes: list[str], reps: int) -> None:
    """sign_statistics' per-round clustering, ours vs the previous scikit-learn calls,
    interleaved on the sign features of ``reps`` random rounds; equal majority sets?"""
    import numpy as np

    from byzbench.defenses.sign_statistics import (
        SignStatistics,
        SignStatisticsParams,
        sign_features,
    )
    print(f"{'cell':<16}{'clusterer':<11}{'ours ms':>9}{'previous ms':>13}{'ratio':>8}"
          f"{'same sets':>11}")
    for size in sizes:
        n, d = (int(v) for v in size.lower().split("x"))
        for clusterer in ("meanshift", "kmeans"):
            p = SignStatisticsParams(clusterer=clusterer)
            t_ours, t_prev, same = [], [], 0
            for r in range(reps):
                x = make_round(n, d, n // 5, seed=r)
                cols = torch.randperm(d, generator=torch.Generator().manual_seed(r))
                feats = sign_features(x, cols[:max(1, d // 10)]).numpy()
                if r == 0:  # warm-up: imports, thread pools
                    SignStatistics._majority(feats, 0, p)
                    previous_majority(feats, p)
                calls = [("ours", functools.partial(SignStatistics._majority, feats, 0, p),
                          t_ours),
                         ("previous", functools.partial(previous_majority, feats, p), t_prev)]
                got = run_alternately(calls, r)
                same += int(np.array_equal(got["ours"], got["previous"]))
            mo, mp = statistics.median(t_ours), statistics.median(t_prev)
            print(f"{size:<16}{clusterer:<11}{mo * 1e3:>9.2f}{mp * 1e3:>13.2f}"
                  f"{mp / mo:>7.1f}x{f'{same}/{reps}':>11}", flush=True)


def run_meanshift(sizes: list[str], reps: int) -> None:
    """scikit-learn's MeanShift call as sign_statistics made it (bandwidth = knn_bandwidth at
    quantile 0.5, bin seeding, cluster_all false) vs mean_shift_labels, interleaved on the
    sign features of ``reps`` random rounds; labels equal, with cluster_all false and true?"""
    import warnings

    import numpy as np
    from sklearn.cluster import MeanShift

    from byzbench.defenses.mean_shift import mean_shift_labels
    from byzbench.defenses.sign_statistics import knn_bandwidth, sign_features

    def sklearn_labels(feats, bandwidth, cluster_all):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Binning data failed": seeds = the points
            return MeanShift(bandwidth=bandwidth, bin_seeding=True,
                             cluster_all=cluster_all).fit_predict(feats)

    print(f"{'cell':<16}{'rows':>5}{'sklearn ms':>12}{'ours ms':>9}{'ratio':>8}"
          f"{'same labels':>13}")
    for size in sizes:
        n, d = (int(v) for v in size.lower().split("x"))
        t_sk, t_ours, same = [], [], 0
        for r in range(reps):
            x = make_round(n, d, n // 5, seed=r)
            cols = torch.randperm(d, generator=torch.Generator().manual_seed(r))
            feats = sign_features(x, cols[:max(1, d // 10)]).numpy()
            bandwidth = knn_bandwidth(feats, 0.5)
            if r == 0:  # warm-up: imports, scipy's BLAS
                sklearn_labels(feats, bandwidth, False)
                mean_shift_labels(feats, bandwidth, False)
            calls = [("sklearn", functools.partial(sklearn_labels, feats, bandwidth, False),
                      t_sk),
                     ("ours", functools.partial(mean_shift_labels, feats, bandwidth, False),
                      t_ours)]
            got = run_alternately(calls, r)
            same += int(np.array_equal(got["sklearn"], got["ours"])
                        and np.array_equal(sklearn_labels(feats, bandwidth, True),
                                           mean_shift_labels(feats, bandwidth, True)))
        med_sk, med_ours = statistics.median(t_sk), statistics.median(t_ours)
        print(f"{size:<16}{n:>5}{med_sk * 1e3:>12.2f}{med_ours * 1e3:>9.3f}"
              f"{med_sk / med_ours:>7.1f}x"
              f"{f'{same}/{reps}':>13}", flush=True)


def run_kmeans(sizes: list[str], reps: int) -> None:
    """The clustering defense's KMeans call (n_init=10, k=2, a new seed each round, inside
    lean_sklearn) vs kmeans_labels, interleaved on the exact coordinates of ``reps`` random
    rounds; labels equal?"""
    import numpy as np
    from sklearn.cluster import KMeans

    from byzbench.defenses.clustering import exact_coordinates
    from byzbench.defenses.kmeans import kmeans_labels
    from byzbench.defenses.sklearn_calls import lean_sklearn

    def sklearn_labels(coords, seed):
        with lean_sklearn():
            return KMeans(n_clusters=2, n_init=10, random_state=seed).fit(coords).labels_

    print(f"{'cell':<16}{'coords':>9}{'sklearn ms':>12}{'ours ms':>9}{'ratio':>8}"
          f"{'same labels':>13}")
    for size in sizes:
        n, d = (int(v) for v in size.lower().split("x"))
        t_sk, t_ours, same = [], [], 0
        for r in range(reps):
            coords = exact_coordinates(make_round(n, d, n // 5, seed=r))
            seed = 1_000_003 * r % (2**31 - 1)
            if r == 0:  # warm-up: imports, scipy's BLAS, the OpenMP thread count
                sklearn_labels(coords, seed)
                kmeans_labels(coords, 2, 10, seed)
            calls = [("sklearn", functools.partial(sklearn_labels, coords, seed), t_sk),
                     ("ours", functools.partial(kmeans_labels, coords, 2, 10, seed), t_ours)]
            got = run_alternately(calls, r)
            same += int(np.array_equal(got["sklearn"], got["ours"]))
        med_sk, med_ours = statistics.median(t_sk), statistics.median(t_ours)
        print(f"{size:<16}{f'{n}x{coords.shape[1]}':>9}{med_sk * 1e3:>12.2f}"
              f"{med_ours * 1e3:>9.3f}{med_sk / med_ours:>7.1f}x{f'{same}/{reps}':>13}",
              flush=True)


def signguard_after(rounds: int, n: int, d: int):
    """A SignGuard instance with ``rounds`` rounds of reputation behind it (its state)."""
    from byzbench.crypto import ClientKeyring
    from byzbench.defenses.base import DefenseSetup, RoundContext
    from byzbench.defenses.signguard import SignGuard

    defense = SignGuard()
    keyring = ClientKeyring(range(n), "ecdsa-p256")
    defense.setup(DefenseSetup(num_clients=n, clients_per_round=n, f=n // 5, dim=d, seed=0,
                               device=torch.device("cpu"),
                               public_keys=keyring.public_registry()))
    for r in range(rounds):
        x = make_round(n, d, n // 5, seed=r)
        nonce = bytes(16)
        messages = keyring.sign_round(list(range(n)), r, nonce, x)[0]
        defense(x, RoundContext(round=r, client_ids=torch.arange(n),
                                num_samples=torch.ones(n), f=n // 5,
                                generator=torch.Generator().manual_seed(r),
                                global_params=torch.zeros(d), messages=messages,
                                nonce=nonce))
    return defense


def run_kernels(sizes: list[str], reps: int) -> None:
    """Small kernels of the defenses' round (and of every oracle call), each against what it
    replaced, interleaved, one torch thread: the row max-abs (``row_scale``, behind every
    overflow-safe cosine) by ``vector_norm(ord=inf)`` vs ``abs().amax``; a stateful
    pipeline's scratch copy (what each oracle call of a defense-aware attack makes) as a
    deep copy of the whole SignGuard vs copies of its stateful layers only; and clipped
    clustering's norm history (30 rounds) deep-copied as a list of per-round tensors vs
    one array."""
    import copy

    import numpy as np

    from byzbench.defenses.base import Defense

    print(f"{'kernel':<44}{'cell':>10}{'before µs':>11}{'now µs':>9}{'ratio':>8}  same")
    for size in sizes:
        n, d = (int(v) for v in size.lower().split("x"))
        x = make_round(n, d, n // 5)
        sg = signguard_after(30, n, d)
        history = [torch.rand(n, dtype=torch.float64) for _ in range(30)]
        kernels = [
            ("row max-abs: vector_norm(inf) → abs().amax",
             lambda x=x: torch.linalg.vector_norm(x, ord=float("inf"), dim=1),
             lambda x=x: x.abs().amax(dim=1), torch.equal),
            ("signguard scratch copy: deep → layers",
             lambda sg=sg: Defense._scratch_copy(sg), sg._scratch_copy,
             lambda a, b: torch.equal(a.layers[2].table.values, b.layers[2].table.values)),
            ("norm history copy: 30 tensors → 1 array",
             lambda h=history: copy.deepcopy(h),
             lambda a=torch.cat(history).numpy(): copy.deepcopy(a),
             lambda a, b: np.array_equal(torch.cat(a).numpy(), b)),
        ]
        for label, before, now, same in kernels:
            t_before: list[float] = []
            t_now: list[float] = []
            got: dict[str, object] = {}
            for r in range(reps):
                got = run_alternately([("before", before, t_before), ("now", now, t_now)], r)
            med_b, med_n = statistics.median(t_before), statistics.median(t_now)
            print(f"{label:<44}{size:>10}{med_b * 1e6:>11.1f}{med_n * 1e6:>9.1f}"
                  f"{med_b / med_n:>7.1f}x  {bool(same(got['before'], got['now']))}",
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="defense names (default: every registered one)")
    ap.add_argument("--sizes", nargs="*", help="NxD cells (default: 20x10000 20x1000000 "
                                               "100x10000 100x1000000; with --references "
                                               "100x1000000)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per cell")
    ap.add_argument("--budget", type=float, default=4.0,
                    help="seconds per cell above which only one timed repetition runs")
    ap.add_argument("--no-loop", action="store_true", help="skip the Python-loop Krum")
    ap.add_argument("--references", action="store_true",
                    help="ours vs straightforward references (sizes default to 100x1000000)")
    ap.add_argument("--clustering", action="store_true",
                    help="sign_statistics' clustering per round, ours vs the previous calls "
                         "(sizes default to 20x4810 100x79510)")
    ap.add_argument("--meanshift", action="store_true",
                    help="scikit-learn's MeanShift vs mean_shift_labels on sign features, one "
                         "torch thread (sizes default to 20x4810 100x79510)")
    ap.add_argument("--kmeans", action="store_true",
                    help="scikit-learn's KMeans vs kmeans_labels on exact coordinates, one "
                         "torch thread (sizes default to 20x4810 100x79510)")
    ap.add_argument("--kernels", action="store_true",
                    help="small kernels of every round and oracle call vs what they replaced, "
                         "one torch thread (sizes default to 20x4810 100x79510)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's, one per "
                                                 "core); engine cells default to one")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # the clustering modes: (chosen, runner, one torch thread unless --threads says otherwise)
    for chosen, runner, one_thread in ((args.meanshift, run_meanshift, True),
                                       (args.kmeans, run_kmeans, True),
                                       (args.kernels, run_kernels, True),
                                       (args.clustering, run_clustering, False)):
        if not chosen:
            continue
        if one_thread:
            torch.set_num_threads(args.threads or 1)
        reps = max(args.reps, 20)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"torch {torch.get_num_threads()} thread(s), load average {load:.1f}; median of "
              f"{reps} rounds, interleaved\n")
        runner(args.sizes or ["20x4810", "100x79510"], reps)
        return
    if args.references:
        torch.manual_seed(0)
        sizes = args.sizes or ["100x1000000"]
        names = args.only or list(REFERENCES)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on "
              f"{os.cpu_count()} CPUs (load average {load:.1f} at start), float32\n")
        started = time.perf_counter()
        for size in sizes:
            n, d = (int(v) for v in size.lower().split("x"))
            run_references(n, d, names, args.reps, args.budget * 5)
            print()
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"total {time.perf_counter() - started:.0f} s (load average {load:.1f} at end)")
        return

    torch.manual_seed(0)
    names = args.only or DEFENSES.names()
    sizes = [tuple(int(v) for v in s.lower().split("x"))
             for s in args.sizes or ["20x10000", "20x1000000", "100x10000", "100x1000000"]]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on {os.cpu_count()} "
          f"CPUs (load average {load:.1f} at start), float32 updates, f = 20 % of n; "
          f"times in ms (median after a warm-up call)\n")
    results: dict[str, dict[tuple[int, int], str]] = {name: {} for name in names}
    krum_times: dict[tuple[int, int], dict[str, float]] = {}
    started = time.perf_counter()
    for n, d in sizes:
        f = n // 5
        x = make_round(n, d, f)
        keys = ClientKeyring(range(n))
        nonce = b"bench-nonce"
        msgs, sign_s = keys.sign_round(list(range(n)), 0, nonce, x)
        gen_seed = torch.Generator().manual_seed(1)
        server = torch.randn(d, generator=gen_seed) * 0.01
        for name in names:
            cls = DEFENSES.get(name)
            defense = cls(cls.Params())
            reason = defense.requirement(n, f)
            if reason is not None:
                results[name][(n, d)] = "skip"
                continue
            defense.setup(DefenseSetup(
                num_clients=n, clients_per_round=n, f=f, dim=d, seed=0,
                device=torch.device("cpu"),
                public_keys=keys.public_registry() if defense.needs_signatures else None,
                server_update=lambda theta, rnd, s=server: s))

            call = functools.partial(run_round, defense, x, f, msgs, nonce)
            try:
                seconds, _, _ = time_call(call, args.reps, args.budget)
            except Exception as exc:  # a benchmark reports, it does not stop
                results[name][(n, d)] = f"error: {type(exc).__name__}"
                continue
            results[name][(n, d)] = fmt(seconds)
            if name in ("krum", "multikrum"):
                krum_times.setdefault((n, d), {})[name] = seconds
        if not args.no_loop and ("krum" in names or "multikrum" in names):
            loop_s, _, (_, chosen) = time_call(functools.partial(loop_krum, x, f),
                                               args.reps, args.budget)
            loop_m, _, _ = time_call(functools.partial(loop_krum, x, f, n - f),
                                     args.reps, args.budget)
            krum_times.setdefault((n, d), {})["loop_krum"] = loop_s
            krum_times[(n, d)]["loop_multikrum"] = loop_m
            vec = DEFENSES.get("krum")()
            ctx = RoundContext(round=0, client_ids=torch.arange(n), num_samples=torch.ones(n),
                               f=f, generator=torch.Generator(), global_params=torch.zeros(d))
            picked = int(torch.argmax(vec(x, ctx).weights))
            krum_times[(n, d)]["same_choice"] = float(picked == chosen[0])
        print(f"  done n={n} d={d} (signing {sign_s:.2f} s, elapsed "
              f"{time.perf_counter() - started:.0f} s)", flush=True)

    header = "".join(f" {f'n={n},d={d:.0e}':>16}" for n, d in sizes)
    print(f"\n{'defense':<20}{header}")
    print("-" * (20 + 17 * len(sizes)))
    for name in names:
        row = "".join(f" {results[name].get(s, '—'):>16}" for s in sizes)
        print(f"{name:<20}{row}")

    if krum_times:
        print("\nKrum: vectorised (one Gram matrix) vs per-pair Python loop, same run")
        print(f"{'cell':<18}{'krum ms':>10}{'loop ms':>11}{'ratio':>9}"
              f"{'multikrum ms':>14}{'loop ms':>11}{'ratio':>9}")
        for (n, d), t in krum_times.items():
            print(f"{f'n={n},d={d:.0e}':<18}{fmt(t.get('krum')):>10}"
                  f"{fmt(t.get('loop_krum')):>11}{ratio(t, 'loop_krum', 'krum'):>9}"
                  f"{fmt(t.get('multikrum')):>14}{fmt(t.get('loop_multikrum')):>11}"
                  f"{ratio(t, 'loop_multikrum', 'multikrum'):>9}"
                  f"  same pick: {'yes' if t.get('same_choice') else 'NO'}")
        big = krum_times.get((100, 1_000_000), {})
        for name in ("krum", "multikrum"):
            if name in big:
                verdict = "meets" if big[name] <= TARGET_S else "MISSES"
                print(f"{name} at n=100, d=1e6: {big[name]:.3f} s — {verdict} the "
                      f"{TARGET_S} s target")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\ntotal {time.perf_counter() - started:.0f} s (load average {load:.1f} at end)")


if __name__ == "__main__":
    main()
