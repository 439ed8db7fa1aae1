"""Flat-kernel mean shift with bin seeding: scikit-learn's ``MeanShift`` labels, vectorised.

The algorithm is the flat-kernel mean shift of Fukunaga & Hostetler (1975), in the form of
Comaniciu & Meer, "Mean shift: a robust approach toward feature space analysis" (IEEE
TPAMI 2002): from each seed, move repeatedly to the mean of the points within distance
``bandwidth`` of the current position; the positions reached are the modes, and each point
belongs to its nearest mode. :func:`mean_shift_labels` reproduces scikit-learn 1.x
``MeanShift(bandwidth=bw, bin_seeding=True, min_bin_freq=1, max_iter=300,
cluster_all=...).fit_predict(X)`` step for step, with every seed climbing at once (numpy
arrays over seeds × points; the only Python loops are over iterations, over the features
of a sum, over the rounds of a fixed point, and over memory blocks of seeds or rows, one
block up to ~600 rows of 3 features):

1. seeds (``get_bin_seeds``): the distinct rows of ``np.round(X / bw)``, in order of first
   occurrence, as float32, times ``bw``; when there are as many bins as points, the points
   themselves (float64);
2. climbing (``_mean_shift_single_seed``): the neighbours of a position are the points
   within distance ``<= bw``; the new position is their ``np.mean`` (numpy's summation
   order reproduced: sequential over the points for two or more features, numpy's pairwise
   summation for one); a seed stops when the move is ``<= 1e-3·bw`` (``np.linalg.norm``)
   or after 300 iterations, and records (position, number of neighbours used for it); a
   seed without neighbours records nothing;
3. modes: identical positions merge (a dict: the later seed's count wins), sorted by
   (count, position) descending; in that order a mode still kept drops the modes within
   ``bw`` of it; each point gets its nearest kept mode (the lowest index on a tie), or -1
   with ``cluster_all=False`` when that mode is farther than ``bw``.

Neighbour tests are decided on the same floating-point numbers as scikit-learn's
``NearestNeighbors`` (``algorithm="auto"``, leaf size 30), so that a point at the boundary
of a ball is in or out as there:

- a KD-tree (radius queries on 12 or more rows, nearest-mode queries on 4 or more modes):
  ``Σ_j (q_j − x_j)²`` summed feature by feature, compared with ``bw·bw``, after the
  root's bounding-box tests (every row in when the box's farthest corner is within ``bw``,
  none when its nearest point is beyond); distances are the square roots;
- brute force (fewer rows or modes; any size above 15 features): ``max(0, (‖q‖² − 2q·x) +
  ‖x‖²)`` with the norms and the products from the same BLAS ``dgemm`` as scikit-learn's
  distance reductions (scipy's; fused multiply-adds where that library uses them), or, for
  the float32 bin seeds' first step, numpy's ``einsum`` norms and ``matmul`` as in
  ``euclidean_distances``.

Bit-for-bit equality holds for float64 C-ordered input with at most 60 rows and at most 15
features (one KD-tree leaf; the norms of the BLAS ``ddot`` equal the ``dgemm`` diagonal).
With more rows scikit-learn's KD-tree has several leaves: it sums a ball's points in the
tree's order (which its partitioning leaves unspecified) and tests inner nodes' boxes; here
the points are summed in index order, so positions may differ in the last bits and a point
within an ulp of a ball's boundary, or tied between two modes, may be decided otherwise.
``tests/test_mean_shift.py`` checks the labels against scikit-learn on random inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from byzbench.defenses.sklearn_calls import finite_matrix, scipy_blas

__all__ = ["MAX_ITER", "mean_shift_labels"]

MAX_ITER = 300          # MeanShift's default max_iter
_RADIUS_NEIGHBORS = 5   # NearestNeighbors' default n_neighbors, which picks the algorithm
_PW_BLOCK = 128         # numpy's pairwise-summation block
_BLOCK_ELEMENTS = 1 << 20  # bounds the [seeds, rows, features] temporaries of one step


def mean_shift_labels(X: np.ndarray, bandwidth: float, cluster_all: bool) -> np.ndarray:
    """[m] int labels of scikit-learn's ``MeanShift(bandwidth=bandwidth, bin_seeding=True,
    cluster_all=cluster_all).fit_predict(X)`` (see the module docstring): 0 is the mode
    with the most points within ``bandwidth``, -1 (``cluster_all=False`` only) a point
    farther than ``bandwidth`` from its nearest mode.

    ``bandwidth`` is used as given where scikit-learn uses it as given (the seed grid, the
    float32 seeds times it, the stopping threshold), so a Python float gives float32 seeds
    as there. Raises ``ValueError`` as scikit-learn does: for a bandwidth that is not > 0,
    non-finite or empty input, and when no seed has a point within ``bandwidth`` (which
    bin seeding cannot produce with at most 3 features: a seed is within ``bw·√3/2`` of the
    points of its bin, up to float32 rounding).
    """
    x = finite_matrix(X)
    radius = float(bandwidth)
    if not (radius > 0 and np.isfinite(radius)):
        raise ValueError(f"bandwidth must be a finite number > 0, got {bandwidth!r}")

    modes, counts = _climb(x, _bin_seeds(x, bandwidth), bandwidth)
    found = counts > 0
    if not found.any():
        raise ValueError(f"No point was within bandwidth={radius:f} of any seed. Try a "
                         "different seeding strategy or increase the bandwidth.")
    modes, counts = modes[found], counts[found]

    # identical positions are one dict key (its first tuple), the last seed's count its value
    first, last = _equal_rows(modes)
    distinct, strength = modes[first], counts[last]
    # sorted((position tuple, count) items, key=(count, position), reverse=True): keys differ
    order = np.lexsort((*distinct.T[::-1], strength))[::-1]
    ranked = np.ascontiguousarray(distinct[order])

    near = _within(ranked, ranked, radius, bandwidth, float32_query=False)
    centres = np.ascontiguousarray(ranked[_suppress(near)])

    # nearest kept mode: NearestNeighbors(n_neighbors=1).fit(centres).kneighbors(x)
    rows = np.arange(len(x))
    if _brute(len(centres), x.shape[1], 1):
        sq = _sq_gemm(x, centres)
        labels = np.argmin(sq, axis=1)
        dist = np.sqrt(sq[rows, labels])
    else:
        rd = _rdist(x, centres)
        labels = np.argmin(rd, axis=1)
        dist = np.sqrt(rd[rows, labels])
    if cluster_all:
        return labels
    return np.where(dist <= bandwidth, labels, -1)


def _bin_seeds(x: np.ndarray, bin_size: Any) -> np.ndarray:
    """``get_bin_seeds(x, bin_size, min_bin_freq=1)``: a dict of bins in order of first
    occurrence."""
    bins = np.round(x / bin_size)
    first, _ = _equal_rows(bins)
    if len(first) == len(x):
        return x
    return np.asarray(bins[first], dtype=np.float32) * bin_size


def _equal_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped as dict keys group tuples of their values (−0.0 == 0.0): each group's
    first and last row index, groups in order of first occurrence."""
    order = np.lexsort(a.T[::-1])                 # stable: equal rows keep their order
    srt = a[order]
    starts = np.ones(len(a), dtype=bool)
    starts[1:] = (srt[1:] != srt[:-1]).any(axis=1)
    ends = np.append(starts[1:], True)
    first, last = order[starts], order[ends]
    by_first = np.argsort(first)
    return first[by_first], last[by_first]


def _climb(x: np.ndarray, seeds: np.ndarray, bandwidth: Any
           ) -> tuple[np.ndarray, np.ndarray]:
    """Every seed's ``_mean_shift_single_seed``: ([S, d] final positions, [S] counts, 0 for
    a seed that found no neighbour)."""
    radius = float(bandwidth)
    stop_thresh = 1e-3 * bandwidth
    n_seeds, d = seeds.shape
    position = seeds.astype(np.float64)           # float32 seeds: exact
    first_float32 = seeds.dtype == np.float32
    modes = np.zeros((n_seeds, d))
    counts = np.zeros(n_seeds, dtype=np.intp)
    x_sq = _sq_norms(x) if _brute(len(x), d, _RADIUS_NEIGHBORS) else None
    block = max(1, _BLOCK_ELEMENTS // (len(x) * d))   # seeds per [seeds, m, d] temporary
    active = np.arange(n_seeds)
    for it in range(MAX_ITER + 1):
        q = position[active]
        n = np.empty(len(q), dtype=np.intp)
        new = np.empty_like(q)
        for lo in range(0, len(q), block):        # one block up to ~600 rows of 3 features
            part = slice(lo, lo + block)
            within = _within(q[part], x, radius, bandwidth, y_sq=x_sq,
                             float32_query=first_float32 and it == 0)
            n[part] = within.sum(axis=1)
            new[part] = _neighbour_means(within, x, np.maximum(n[part], 1))
        alive = n > 0                             # no neighbour: the seed records nothing
        active, q, n, new = active[alive], q[alive], n[alive], new[alive]
        if active.size == 0:
            break
        step = new - q
        moved = np.sqrt(np.matmul(step[:, None, :], step[:, :, None])[:, 0, 0])  # linalg.norm
        done = (moved <= stop_thresh) | (it == MAX_ITER)
        modes[active[done]] = new[done]
        counts[active[done]] = n[done]
        position[active] = new
        active = active[~done]
        if active.size == 0:
            break
    return modes, counts


def _suppress(near: np.ndarray) -> np.ndarray:
    """[n] bool kept by scikit-learn's loop over the ranked modes: ``if unique[i]:
    unique[neighbours of i] = 0; unique[i] = 1``, where ``near[i, j]`` is j among i's
    neighbours. Mode i acts iff no earlier acting mode has it among its neighbours
    (a triangular recurrence, solved as a fixed point: its only one), and stays iff it acted
    and no later acting mode has it among its neighbours."""
    n = len(near)
    later = np.tri(n, k=-1, dtype=bool)          # later[j, i]: j > i
    earlier = later.T                             # earlier[j, i]: j < i
    acts = np.ones(n, dtype=bool)
    while True:
        nxt = ~(near & earlier & acts[:, None]).any(axis=0)
        if np.array_equal(nxt, acts):
            break
        acts = nxt
    return acts & ~(near & later & acts[:, None]).any(axis=0)


def _neighbour_means(within: np.ndarray, x: np.ndarray, n: np.ndarray) -> np.ndarray:
    """[S, d] ``np.mean(x[neighbours], axis=0)`` per row of ``within``, neighbours in index
    order: numpy sums a [k, d ≥ 2] array over axis 0 point after point, and a [k, 1] one
    by its pairwise summation."""
    if x.shape[1] == 1:
        order = np.argsort(~within, axis=1, kind="stable")      # neighbours first, in order
        vals = np.where(np.arange(len(x)) < n[:, None], x[order, 0], 0.0)
        sums = _pairwise_sum(vals, np.zeros(len(n), dtype=np.intp), n)[:, None]
    else:
        sums = np.cumsum(np.where(within[:, :, None], x[None], 0.0), axis=1)[:, -1]
    return sums / n[:, None]


def _pairwise_sum(v: np.ndarray, start: np.ndarray, n: np.ndarray) -> np.ndarray:
    """numpy's pairwise summation of float64 (the add-reduce loop along a contiguous axis)
    of ``v[s, start[s]:start[s] + n[s]]`` for every row s: below 8 terms in order; up to 128,
    8 interleaved partial sums over whole blocks of 8, combined as a tree, then the rest in
    order; above, the two halves (split at a multiple of 8) summed recursively."""
    length = v.shape[1]

    def take(offset: np.ndarray, width: int, count: np.ndarray) -> np.ndarray:
        j = np.arange(width)
        idx = np.minimum(offset[:, None] + j, length - 1)
        return np.where(j < count[:, None], np.take_along_axis(v, idx, axis=1), 0.0)

    short = np.cumsum(take(start, 7, n), axis=1)[:, -1]
    blocks = n // 8
    lanes = np.cumsum(take(start, _PW_BLOCK, 8 * blocks).reshape(-1, _PW_BLOCK // 8, 8),
                      axis=1)[:, -1]
    tree = (((lanes[:, 0] + lanes[:, 1]) + (lanes[:, 2] + lanes[:, 3]))
            + ((lanes[:, 4] + lanes[:, 5]) + (lanes[:, 6] + lanes[:, 7])))
    rest = take(start + 8 * blocks, 7, n - 8 * blocks)
    out = np.where(n < 8, short,
                   np.cumsum(np.concatenate([tree[:, None], rest], axis=1), axis=1)[:, -1])
    big = n > _PW_BLOCK
    if big.any():
        half = n[big] // 2
        half -= half % 8
        out[big] = (_pairwise_sum(v[big], start[big], half)
                    + _pairwise_sum(v[big], start[big] + half, n[big] - half))
    return out


# ---- neighbour tests on scikit-learn's numbers ---------------------------------------------

def _brute(n_fit: int, n_features: int, n_neighbors: int) -> bool:
    """``NearestNeighbors(algorithm="auto")``'s choice of brute force over a KD-tree."""
    return n_features > 15 or n_neighbors >= n_fit // 2


def _within(q: np.ndarray, y: np.ndarray, radius: float, bandwidth: Any, *,
            float32_query: bool, y_sq: np.ndarray | None = None) -> np.ndarray:
    """[len(q), len(y)] bool: ``NearestNeighbors(radius=bandwidth).fit(y)
    .radius_neighbors([q_i], bandwidth)`` for every row (``float32_query``: q holds float32
    values, which scikit-learn's brute force routes through ``euclidean_distances``)."""
    if not _brute(len(y), y.shape[1], _RADIUS_NEIGHBORS):
        return _kd_within(q, y, radius)
    if float32_query:
        return _sq_numpy(q, y) <= bandwidth * bandwidth
    return _sq_gemm(q, y, y_sq) <= radius * radius


def _rdist(q: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[len(q), len(y)] the KD-tree's reduced distance: ``Σ_j (q_j − y_j)²`` in feature
    order, no fused multiply-add."""
    t = q[:, None, :] - y[None, :, :]
    out = t[..., 0] * t[..., 0]
    for j in range(1, t.shape[-1]):
        out = out + t[..., j] * t[..., j]
    return out


def _kd_within(q: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """``KDTree(y, leaf_size=30).query_radius(q, radius)`` as a mask: the root's bounding
    box first (its farthest corner within ``radius``: every row; its nearest point beyond:
    no row; both distances as square roots), then each row by reduced distance against
    ``radius·radius``. With one leaf (≤ 60 rows) that is the whole query; a deeper tree
    also tests its inner nodes' boxes, which this does not."""
    within = _rdist(q, y) <= radius * radius
    lo, hi = y.min(axis=0), y.max(axis=0)
    d_lo = lo - q
    d_hi = q - hi
    gap = 0.5 * ((d_lo + np.abs(d_lo)) + (d_hi + np.abs(d_hi)))
    far = np.maximum(np.abs(d_lo), np.abs(d_hi))
    nearest, farthest = gap[:, 0] * gap[:, 0], far[:, 0] * far[:, 0]
    for j in range(1, q.shape[1]):
        nearest = nearest + gap[:, j] * gap[:, j]
        farthest = farthest + far[:, j] * far[:, j]
    within[np.sqrt(farthest) <= radius] = True
    within[np.sqrt(nearest) > radius] = False
    return within


def _sq_norms(a: np.ndarray) -> np.ndarray:
    """[n] squared row norms as BLAS ``ddot`` gives them (scikit-learn's
    ``_sqeuclidean_row_norms``): the diagonal of ``a aᵀ`` from ``dgemm``, the same
    accumulation below 16 features on the OpenBLAS kernels checked (tests/test_mean_shift.py
    compares the labels, which catches a library where they differ)."""
    blas = scipy_blas()
    out = np.empty(len(a))
    for lo in range(0, len(a), 256):              # [256, 256] products, not [n, n]
        part = a[lo:lo + 256]
        out[lo:lo + 256] = np.diagonal(blas.dgemm(1.0, part.T, part.T, trans_a=1))
    return out


def _sq_gemm(q: np.ndarray, y: np.ndarray, y_sq: np.ndarray | None = None) -> np.ndarray:
    """[len(q), len(y)] squared distances as scikit-learn's Euclidean distance reductions
    compute them: ``max(0, (‖q‖² + (−2 q·yᵀ)) + ‖y‖²)``, the middle term from ``dgemm``
    called as ``MiddleTermComputer`` calls it."""
    q = np.ascontiguousarray(q)
    cross = scipy_blas().dgemm(-2.0, y.T, q.T, trans_a=1).T
    y_sq = _sq_norms(y) if y_sq is None else y_sq
    return np.maximum((_sq_norms(q)[:, None] + cross) + y_sq[None, :], 0.0)


def _sq_numpy(q: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[len(q), len(y)] ``euclidean_distances(q_i, y, squared=True)`` row by row (float64):
    ``einsum`` norms, one ``matmul`` per query row, ``(−2 q·yᵀ + ‖q‖²) + ‖y‖²``, clamped."""
    dist = -2 * np.matmul(q[:, None, :], y.T)[:, 0, :]
    dist += np.einsum("ij,ij->i", q, q)[:, None]
    dist += np.einsum("ij,ij->i", y, y)[None, :]
    return np.maximum(dist, 0.0)
