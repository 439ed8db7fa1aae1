"""k-means (Lloyd) with k-means++ seeding and restarts: scikit-learn's ``KMeans`` labels,
vectorised over the restarts.

The algorithm is Lloyd's (1957/1982): alternately give each point its nearest centre and
move each centre to the mean of its points, until the labels stop changing or the centres
move little; the centres start from k-means++ seeding (Arthur & Vassilvitskii, "k-means++:
the advantages of careful seeding", SODA 2007, with its greedy variant: ``2 + ⌊ln k⌋``
candidates per centre, the one lowering the potential most kept); of ``n_init`` restarts
the one with the least inertia is kept. :func:`kmeans_labels` reproduces scikit-learn 1.x
``KMeans(n_clusters, n_init=n_init, random_state=seed, init="k-means++",
algorithm="lloyd", max_iter=300, tol=1e-4).fit(X).labels_`` for float64 input, step for
step, with every restart running at once (numpy arrays over restarts × points × clusters;
the Python loops are over seeding steps, Lloyd iterations, the restarts' BLAS calls, the
rare empty-cluster relocations and the final scan of the restarts):

1. set-up (``KMeans.fit``): the tolerance ``mean(var(X, axis=0)) · 1e-4`` from the input,
   then the points centred on their mean, squared norms by ``np.einsum``;
2. seeding (``_kmeans_plusplus``), on ``RandomState(seed)``'s draws in scikit-learn's
   order: per restart one ``random_sample`` for the first centre (``choice`` with uniform
   ``p``) and ``uniform(size=2 + ⌊ln k⌋)`` per further centre, all drawn at once (the same
   stream, as no draw depends on the data); squared distances ``max(0, (−2 c·x + ‖c‖²) +
   ‖x‖²)`` with numpy's ``matmul`` called on the same shapes (one more leading axis for the
   restarts, which numpy loops over), potentials by the same ``matmul``, candidates by
   ``searchsorted`` on the sequential ``cumsum``;
3. Lloyd (``_kmeans_single_lloyd``, ``lloyd_iter_chunked_dense``): per restart and chunk
   of 256 points, ``‖c‖² − 2 x·c`` from scipy's ``dgemm`` called exactly as scikit-learn's
   Cython calls it (BLAS order dependent, so the same call, one per restart); the first
   nearest centre; centre sums in point order (``np.bincount``: sequential), per OpenMP
   thread's chunks and then added thread after thread; empty clusters relocated as
   scikit-learn does (its numpy calls, per restart); centres times ``1/count``; shifts by
   scikit-learn's 4-way unrolled squared distance; stop at equal labels (strict), or at a
   total squared shift ``<= tol`` (followed by one more assignment), or after 300 steps;
4. selection (``KMeans.fit``): inertia per restart (the unrolled distances summed per
   OpenMP thread's static share of the points, the partial sums added thread after
   thread), and the restarts scanned in order: a restart replaces the best so far when its
   inertia is strictly lower and its labels are not the best's up to a renaming
   (``_is_same_clustering``).

Bit-for-bit equality (labels, inertia and centres) holds for finite float64 input whose
squared distances cannot overflow (other dtypes are converted to float64, where
scikit-learn would run float32 input in float32; overflowing input goes to scikit-learn
itself), given the OpenMP thread count scikit-learn runs with (``n_threads``, default 1: the
defenses' cells ran scikit-learn on one OpenMP thread — one torch thread, whose OpenMP
runtime scikit-learn shares once torch is loaded, or byzbench's one-thread limit — and a
fixed count keeps a cell's labels independent of the machine). That count decides the
order of the inertia's partial sums (and, above 256 points, of the centre sums), so two
restarts whose inertias are within a rounding of each other may be ranked otherwise under
another count. Where scikit-learn's own result is not deterministic (three or more threads: its
OpenMP reductions add the partial sums in the order the threads finish) the threads' order
is taken. The dot products come from the libraries scikit-learn calls (numpy's ``matmul``
for the seeding, scipy's ``dgemm`` for Lloyd) with the same shapes and arguments; Lloyd's
``dgemm`` runs here without scikit-learn's one-BLAS-thread limit, which could matter only
where the BLAS splits a product between threads (OpenBLAS: k·chunk·d above 262,144) in a
way that changes the order of a dot product (OpenBLAS splits rows and columns, not the
dot products; checked at k = 64, d = 100). Every other operation is numpy's, or the IEEE operations of
scikit-learn's Cython in its order. ``tests/test_kmeans.py`` checks labels, inertia and
centres against scikit-learn on random inputs, and each step against the scikit-learn
function it reproduces.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import numpy as np

from byzbench.defenses.sklearn_calls import finite_matrix, scipy_blas

__all__ = ["MAX_ITER", "TOL", "kmeans_labels"]

MAX_ITER = 300       # KMeans' default max_iter
TOL = 1e-4           # KMeans' default tol
CHUNK_SIZE = 256     # points per chunk of scikit-learn's Lloyd iteration

_LOCAL = threading.local()   # one RandomState per thread, re-seeded per call


def kmeans_labels(X: np.ndarray, n_clusters: int, n_init: int, random_state: int, *,
                  n_threads: int = 1) -> np.ndarray:
    """[m] int32 labels of scikit-learn's ``KMeans(n_clusters, n_init=n_init,
    random_state=random_state).fit(X).labels_`` (k-means++ seeding, Lloyd, ``max_iter=300``,
    ``tol=1e-4``; see the module docstring), numbered as scikit-learn numbers them.

    ``n_threads``: the OpenMP threads of the scikit-learn run reproduced (the order of its
    partial sums; see the module docstring). Raises ``ValueError`` as scikit-learn does
    for an empty, non-2-D or non-finite ``X`` and for fewer rows than ``n_clusters``. Input
    whose squared distances could overflow (|x| ≳ 1e150) is clustered by scikit-learn itself
    (imported then), where inf and nan distances follow its own comparisons.
    """
    labels, _, _ = _kmeans(X, n_clusters, n_init, random_state, n_threads)
    return labels


def _kmeans(X: np.ndarray, n_clusters: int, n_init: int, random_state: int,
            n_threads: int = 1) -> tuple[np.ndarray, float, np.ndarray]:
    """(labels_, inertia_, cluster_centers_) of the fit :func:`kmeans_labels` describes."""
    x = finite_matrix(X, copy=True)
    k, restarts, seed = int(n_clusters), int(n_init), int(random_state)
    n = x.shape[0]
    if k < 1 or restarts < 1:
        raise ValueError(f"n_clusters and n_init must be >= 1, got {k} and {restarts}")
    if n < k:
        raise ValueError(f"n_samples={n} should be >= n_clusters={k}.")
    threads = int(n_threads)
    if threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")

    tol = np.mean(np.var(x, axis=0)) * TOL            # _tolerance, on the input
    x_mean = x.mean(axis=0)
    x -= x_mean                                       # "subtract of mean of x"
    x_sq = np.einsum("ij,ij->i", x, x)                # row_norms(X, squared=True)
    if not np.isfinite(8.0 * n * x_sq.max()):
        return _sklearn_fit(X, k, restarts, seed, threads)

    rs = _random_state(seed)                          # check_random_state(int)
    centers = _kmeans_plusplus(x, x_sq, k, restarts, rs)
    labels, inertia, centers = _lloyd(x, centers, tol, threads)

    best = 0
    for i in range(1, restarts):
        if inertia[i] < inertia[best] and not _same_clustering(labels[i], labels[best], k):
            best = i
    return labels[best], float(inertia[best]), centers[best] + x_mean


def _random_state(seed: int) -> np.random.RandomState:
    """``np.random.RandomState(seed)``'s state (MT19937, legacy seeding), on a RandomState
    kept per thread and re-seeded: constructing one first seeds a generator from the OS's
    entropy (~0.1 ms), which the legacy seeding then replaces."""
    rs = getattr(_LOCAL, "random_state", None)
    if rs is None:
        rs = _LOCAL.random_state = np.random.RandomState(0)
    rs.seed(seed)
    return rs


def _sklearn_fit(X: Any, k: int, restarts: int, seed: int, threads: int
                 ) -> tuple[np.ndarray, float, np.ndarray]:
    """scikit-learn's own fit on ``threads`` OpenMP threads, for input
    :func:`kmeans_labels` does not reproduce."""
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits
    with warnings.catch_warnings(), threadpool_limits(threads, user_api="openmp"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=k, n_init=restarts, random_state=seed).fit(X)
    return km.labels_, float(km.inertia_), km.cluster_centers_


# ---- k-means++ seeding ------------------------------------------------------------------------

def _kmeans_plusplus(x: np.ndarray, x_sq: np.ndarray, k: int, restarts: int,
                     rs: np.random.RandomState) -> np.ndarray:
    """[restarts, k, d] initial centres: ``_kmeans_plusplus`` (sample weights all one) for
    each restart in turn, on one RandomState."""
    n, d = x.shape
    trials = 2 + int(np.log(k))
    draws = rs.random_sample(restarts * (1 + (k - 1) * trials)).reshape(restarts, -1)
    weight = np.ones(n)
    # choice(n, p=weight / weight.sum()): searchsorted(cdf, random_sample(), "right")
    cdf = (weight / weight.sum()).cumsum()
    cdf /= cdf[-1]
    first = cdf.searchsorted(draws[:, 0], side="right")
    rows = np.arange(restarts)
    ids = np.empty((restarts, k), dtype=np.intp)
    ids[:, 0] = first
    xt = x.T
    c0 = x[first]                                                   # [R, d]
    closest = -2 * np.matmul(c0[:, None, :], xt)                    # [R, 1, n]
    closest += np.einsum("ij,ij->i", c0, c0)[:, None, None]
    closest += x_sq
    np.maximum(closest, 0, out=closest)
    pot = np.matmul(closest, weight)                                # [R, 1]
    closest = closest[:, 0, :]
    for c in range(1, k):
        u = draws[:, 1 + (c - 1) * trials:1 + c * trials]          # uniform(size=trials)
        rand_vals = u * pot                                         # [R, trials]
        cum = np.cumsum(weight * closest, axis=1)                   # [R, n], sequential
        cand = (cum[:, None, :] < rand_vals[:, :, None]).sum(axis=2)  # searchsorted, left
        np.minimum(cand, n - 1, out=cand)
        xc = x[cand]                                                # [R, trials, d]
        dist = -2 * np.matmul(xc, xt)                               # [R, trials, n]
        dist += np.einsum("ij,ij->i", xc.reshape(-1, d), xc.reshape(-1, d)
                          ).reshape(restarts, trials)[:, :, None]
        dist += x_sq
        np.maximum(dist, 0, out=dist)
        np.minimum(closest[:, None, :], dist, out=dist)
        cand_pot = np.matmul(dist, weight.reshape(-1, 1))           # [R, trials, 1]
        best = np.argmin(cand_pot[:, :, 0], axis=1)
        pot = cand_pot[rows, best]                                  # [R, 1]
        closest = dist[rows, best]
        ids[:, c] = cand[rows, best]
    return x[ids]


# ---- Lloyd ------------------------------------------------------------------------------------

class _Chunks(NamedTuple):
    """How ``lloyd_iter_chunked_dense`` splits n points: chunks of 256 (the last shorter),
    each OpenMP thread summing a static share of the chunks."""
    bounds: list[tuple[int, int]]   # [lo, hi) of each chunk
    point_thread: np.ndarray        # [n] the thread whose buffer sums each point
    threads: int                    # min(OpenMP threads, chunks)

    @classmethod
    def of(cls, n: int, threads: int) -> _Chunks:
        bounds = [(lo, min(lo + CHUNK_SIZE, n)) for lo in range(0, n, CHUNK_SIZE)]
        used = min(threads, len(bounds))
        chunk_thread = _static_shares(len(bounds), used)
        return cls(bounds, np.repeat(chunk_thread, [hi - lo for lo, hi in bounds]), used)


def _lloyd(x: np.ndarray, centers: np.ndarray, tol: float, threads: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every restart's ``_kmeans_single_lloyd`` from ``centers`` [R, k, d]: ([R, n] int32
    labels, [R] inertia, [R, k, d] final centres). All restarts step together; a restart
    leaves at its convergence (then its iteration count is everyone's)."""
    restarts = centers.shape[0]
    n = x.shape[0]
    chunks = _Chunks.of(n, threads)
    centers = centers.copy()
    labels = np.empty((restarts, n), dtype=np.int32)
    labels_old = np.full((restarts, n), -1, dtype=np.int32)
    strict = np.zeros(restarts, dtype=bool)
    active = np.arange(restarts)
    for _ in range(MAX_ITER):
        lab, new, shift = _lloyd_step(x, centers[active], chunks)
        labels[active] = lab
        centers[active] = new                  # "centers, centers_new = centers_new, centers"
        same = (lab == labels_old[active]).all(axis=1)
        strict[active[same]] = True
        done = same | (np.sum(shift ** 2, axis=1) <= tol)
        labels_old[active] = lab
        active = active[~done]
        if active.size == 0:
            break
    rerun = np.flatnonzero(~strict)            # labels of the final centres (E-step only)
    if rerun.size:
        labels[rerun] = _assign(x, centers[rerun], chunks)
    return labels, _inertia(x, centers, labels, threads), centers


def _lloyd_step(x: np.ndarray, old: np.ndarray, chunks: _Chunks
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``lloyd_iter_chunked_dense(update_centers=True)`` for each restart's [k, d] centres
    ``old`` [A, k, d]: ([A, n] int32 labels, [A, k, d] new centres, [A, k] centre shifts)."""
    k = old.shape[1]
    labels = _assign(x, old, chunks)
    new = _center_sums(x, labels, k, chunks)
    counts = _counts(labels, k)
    empty = (counts == 0).any(axis=1)
    if empty.any():
        for r in np.flatnonzero(empty):
            _relocate_empty_clusters(x, old[r], new[r], counts[r], labels[r])
            _average_centers(new[r], counts[r])
        regular = ~empty
        new[regular] *= (1.0 / counts[regular])[:, :, None]
    else:
        new *= (1.0 / counts)[:, :, None]
    return labels, new, np.sqrt(_sq_dist_unrolled(new, old))


def _assign(x: np.ndarray, centers: np.ndarray, chunks: _Chunks) -> np.ndarray:
    """[A, n] int32 nearest centre (the first on a tie) of every point for each restart's
    [k, d] centres: ``‖c‖² − 2 x·c`` as ``_update_chunk_dense`` computes it, one ``dgemm``
    per restart and chunk (``dgemm('T', 'N', k, n_chunk, d, −2, C, d, X, d, 1, D, k)``, D
    preset to the centres' squared norms)."""
    gemm = scipy_blas().dgemm
    a, k, d = centers.shape
    flat = centers.reshape(-1, d)
    dist = np.empty((a, x.shape[0], k))
    dist[...] = np.einsum("ij,ij->i", flat, flat).reshape(a, 1, k)
    for lo, hi in chunks.bounds:
        xt = x[lo:hi].T
        for r in range(a):
            gemm(-2.0, centers[r].T, xt, 1.0, dist[r, lo:hi].T, trans_a=1, overwrite_c=1)
    return np.argmin(dist, axis=2).astype(np.int32)


def _center_sums(x: np.ndarray, labels: np.ndarray, k: int, chunks: _Chunks) -> np.ndarray:
    """[A, k, d] per-cluster sums of the points in point order (``np.bincount`` adds
    sequentially, from zero) within each OpenMP thread's chunks, the threads' sums then
    added to zero in thread order."""
    a, n = labels.shape
    d = x.shape[1]
    t = chunks.threads
    seg = (np.arange(a)[:, None] * k + labels) * t + chunks.point_thread     # [A, n]
    key = (seg[:, :, None] * d + np.arange(d)).ravel()
    vals = np.broadcast_to(x, (a, n, d)).ravel()
    sums = np.bincount(key, weights=vals, minlength=a * k * t * d).reshape(a, k, t, d)
    if t == 1:
        return sums[:, :, 0]
    total = np.zeros((a, k, d))
    for i in range(t):
        total = total + sums[:, :, i]
    return total


def _counts(labels: np.ndarray, k: int) -> np.ndarray:
    a = labels.shape[0]
    flat = (np.arange(a)[:, None] * k + labels).ravel()
    return np.bincount(flat, minlength=a * k).reshape(a, k).astype(np.float64)


def _relocate_empty_clusters(x: np.ndarray, centers_old: np.ndarray, centers_new: np.ndarray,
                             weight_in_clusters: np.ndarray, labels: np.ndarray) -> None:
    """scikit-learn's ``_relocate_empty_clusters_dense`` (sample weights one), in place on
    one restart's sums and counts: each empty cluster takes, farthest first, a point far
    from its centre (``argpartition`` as there), unless every point sits on its centre."""
    empty_clusters = np.where(np.equal(weight_in_clusters, 0))[0].astype(np.int32)
    n_empty = empty_clusters.shape[0]
    if n_empty == 0:
        return
    distances = ((np.asarray(x) - np.asarray(centers_old)[labels]) ** 2).sum(axis=1)
    far_from_centers = np.argpartition(distances, -n_empty)[:-n_empty - 1:-1].astype(np.int32)
    if np.max(distances) == 0:
        return
    for idx in range(n_empty):
        new_cluster_id = empty_clusters[idx]
        far_idx = far_from_centers[idx]
        old_cluster_id = labels[far_idx]
        centers_new[old_cluster_id] -= x[far_idx] * 1.0
        centers_new[new_cluster_id] = x[far_idx] * 1.0
        weight_in_clusters[new_cluster_id] = 1.0
        weight_in_clusters[old_cluster_id] -= 1.0


def _average_centers(centers: np.ndarray, weight_in_clusters: np.ndarray) -> None:
    """scikit-learn's ``_average_centers`` for one restart, in place: sums times 1/count;
    a still empty cluster copies the heaviest cluster's row as it stands at that moment
    (already averaged if it comes earlier, still a sum if later)."""
    argmax_weight = int(np.argmax(weight_in_clusters))
    for j in range(centers.shape[0]):
        if weight_in_clusters[j] > 0:
            centers[j] *= 1.0 / weight_in_clusters[j]
        else:
            centers[j] = centers[argmax_weight]


def _sq_dist_unrolled(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``Σ_j (a_j − b_j)²`` over the last axis as scikit-learn's ``_euclidean_dense_dense``
    sums it: blocks of four features ``((s₀ + s₁) + s₂) + s₃`` added in order, then the
    remaining features one by one."""
    diff = a - b
    sq = diff * diff
    d = sq.shape[-1]
    blocks = d // 4
    if blocks:
        q = sq[..., :4 * blocks]
        part = ((q[..., 0::4] + q[..., 1::4]) + q[..., 2::4]) + q[..., 3::4]
        out = np.cumsum(part, axis=-1)[..., -1]
    else:
        out = np.zeros(sq.shape[:-1])
    for j in range(4 * blocks, d):
        out = out + sq[..., j]
    return out


def _static_shares(n_items: int, n_threads: int) -> np.ndarray:
    """[n_items] the thread of each iteration under OpenMP's ``schedule(static)`` (libgomp:
    contiguous blocks, the first ``n_items % n_threads`` threads one iteration longer)."""
    q, extra = divmod(n_items, n_threads)
    sizes = [q + 1 if t < extra else q for t in range(n_threads)]
    return np.repeat(np.arange(n_threads), sizes)


def _inertia(x: np.ndarray, centers: np.ndarray, labels: np.ndarray, threads: int
             ) -> np.ndarray:
    """[R] ``_inertia_dense``: the unrolled squared distances of the points to their
    centres, summed in point order within each thread's static share (``prange``), the
    partial sums added to zero in thread order."""
    r = np.arange(centers.shape[0])[:, None]
    sq = _sq_dist_unrolled(x[None], centers[r, labels])             # [R, n]
    share = _static_shares(x.shape[0], threads)
    total = np.zeros(centers.shape[0])
    for t in range(threads):
        part = sq[:, share == t]
        if part.shape[1]:
            total = total + np.cumsum(part, axis=1)[:, -1]
    return total


def _same_clustering(labels1: np.ndarray, labels2: np.ndarray, k: int) -> bool:
    """scikit-learn's ``_is_same_clustering``: every label of ``labels1`` maps to a single
    label of ``labels2``."""
    table = np.zeros((k, k), dtype=bool)
    table[labels1, labels2] = True
    return bool((table.sum(axis=1) <= 1).all())


