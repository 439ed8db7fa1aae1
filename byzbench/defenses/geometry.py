"""Overflow-safe geometry and robust statistics on an ``[n, d]`` update matrix.

Pure functions, no state, no Python loop over clients or coordinates; the defenses build on
them. Attackers may send rows holding NaN, ±Inf or absurd magnitudes (1e30); the functions
here never return NaN for such input:

- :func:`finite_rows`: which rows are usable at all;
- :func:`gram` computes ``X Xᵀ`` (optionally centred) with matrix products in the input
  dtype over column blocks, accumulated in float64; when a finite row's squared norm
  overflows the input dtype, it recomputes the product on row-scaled data so every entry
  stays exact within float64 range;
- :func:`pairwise_sq_distances` is ``‖a‖² + ‖b‖² − 2ab`` from one Gram matrix of the rows
  *centred on a typical row* (less cancellation), clamped at 0, float64, ``+inf`` for
  non-finite rows;
- :func:`pairwise_cosine`, :func:`cosine_to`: overflow-safe, and accurate for nearly
  parallel rows (recomputed from unit rows in float64 by centred distances);
- :func:`row_norms`: overflow-safe; :func:`row_sq_norms`: accurate for large d;
  :func:`distances_to`: ``‖x_i − v‖`` by one matrix-vector product, no ``[n, d]``
  temporary;
- :func:`coordinate_median`, :func:`sort_columns`, :func:`closest_to_median`,
  :func:`robust_zscores`: robust statistics;
- :func:`scatter_rows`, :func:`normalized_weights`, :func:`mean_of`: weights and means.

The round bookkeeping (non-finite rows, the assumed count f, scattering a verdict back to
the round's rows) is not here: :meth:`byzbench.defenses.base.Defense.__call__` does it once
for every defense.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "finite_rows",
    "row_norms",
    "distances_to",
    "row_sq_norms",
    "row_scale",
    "gram",
    "pairwise_sq_distances",
    "pairwise_cosine",
    "cosine_to",
    "sort_columns",
    "coordinate_median",
    "closest_to_median",
    "robust_zscores",
    "scatter_rows",
    "normalized_weights",
    "mean_of",
]


def finite_rows(updates: torch.Tensor) -> torch.Tensor:
    """[n] bool: rows whose every entry is finite (no NaN, no ±Inf).

    One cheap pass (row sums); only rows whose sum is not finite — NaN/Inf rows, or finite
    rows whose sum overflows — are checked entry by entry.
    """
    n, d = updates.shape
    if d == 0 or n == 0:
        return torch.ones(n, dtype=torch.bool, device=updates.device)
    ok = torch.isfinite(updates.sum(dim=1))
    if not bool(ok.all()):
        suspect = torch.nonzero(~ok).squeeze(1)
        ok[suspect] = torch.isfinite(updates[suspect]).all(dim=1)
    return ok


def row_scale(x: torch.Tensor) -> torch.Tensor:
    """[n] max |x_ij| per row, 1 where the row is all zero (so dividing by it is safe).

    ``abs().amax`` rather than ``vector_norm(ord=inf)``: the same values (a NaN row's too),
    about 12× faster on the CPU at [20, 4810] (``benchmarks/bench_defenses.py --kernels``)."""
    scale = x.abs().amax(dim=1)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


GRAM_BLOCK = 1 << 16  # columns per block: a [n, 65536] float32 slice stays cache-friendly


def gram(x: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """``(X − c)(X − c)ᵀ`` as float64 ``[n, n]`` for a matrix of *finite* rows, no overflow.

    Matrix products in ``x``'s dtype over blocks of 65,536 columns, accumulated in float64
    (the centred block is formed on the fly, so no centred copy of ``x`` is made), then
    symmetrised. If a row's squared norm overflows the input dtype (attack rows like 1e30),
    the product is recomputed on rows divided by their max-abs value and rescaled in
    float64 — exact up to float64 range (≈1e308). ``center`` [d] defaults to no centring.
    """
    n, d = x.shape
    if n == 0:
        return torch.zeros(0, 0, dtype=torch.float64, device=x.device)
    g = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for start in range(0, max(d, 1), GRAM_BLOCK):
        block = x[:, start:start + GRAM_BLOCK]
        if center is not None:
            block = block - center[start:start + GRAM_BLOCK]
        g += (block @ block.T).to(torch.float64)
    if not bool(torch.isfinite(g).all()):
        xc = x if center is None else x - center
        scale = row_scale(xc)
        xs = xc / scale[:, None]
        s = scale.to(torch.float64)
        g = (xs @ xs.T).to(torch.float64) * s[:, None] * s[None, :]
    return (g + g.T) * 0.5  # exactly symmetric (BLAS blocking may differ in the last bit)


def row_norms(updates: torch.Tensor) -> torch.Tensor:
    """[n] float64 L2 norms, overflow-safe; ``+inf`` for non-finite rows."""
    n = updates.shape[0]
    out = torch.full((n,), float("inf"), dtype=torch.float64, device=updates.device)
    ok = finite_rows(updates)
    if n == 0 or not bool(ok.any()):
        return out
    x = updates if bool(ok.all()) else updates[ok]
    norms = torch.linalg.vector_norm(x, dim=1).to(torch.float64)
    bad = ~torch.isfinite(norms)
    if bool(bad.any()):  # squared norm overflowed the input dtype: rescale those rows
        xb = x[bad]
        scale = row_scale(xb)
        norms[bad] = (torch.linalg.vector_norm(xb / scale[:, None], dim=1).to(torch.float64)
                      * scale.to(torch.float64))
    out[ok] = norms
    return out


NORM_BLOCK = 1024  # columns per partial norm of row_sq_norms
SMALL_MATRIX = 1 << 20  # up to this many entries distances_to forms x − v directly
# accept ‖x_i − c‖² − 2(x_i − c)·u + ‖u‖² when its rounding (float32 dot products, relative
# error ≲ 2e-7 of ‖x_i‖‖u‖) stays below 2e-6 of the result; recompute the row directly else
CANCELLATION = 0.05


def row_sq_norms(x: torch.Tensor) -> torch.Tensor:
    """[n] float64 squared L2 norms of the rows, accurate to ~1e-8 relative for any d:
    float32 norms of 1,024-column pieces (one strided view, no copy) summed in float64
    (one float32 reduction over 10⁶ terms is only good to ~3e-5). ``+inf`` where a piece's
    square overflows the input dtype."""
    n, d = x.shape
    m = d // NORM_BLOCK * NORM_BLOCK
    out = torch.zeros(n, dtype=torch.float64, device=x.device)
    if m > 0:
        pieces = x.as_strided((n, m // NORM_BLOCK, NORM_BLOCK),
                              (x.stride(0), NORM_BLOCK * x.stride(1), x.stride(1)))
        out += torch.linalg.vector_norm(pieces, dim=2).to(torch.float64).square_().sum(dim=1)
    if m < d:
        out += torch.linalg.vector_norm(x[:, m:], dim=1).to(torch.float64).square_()
    return out


def _direct_sq_distances(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    diff = x - v
    sq = row_sq_norms(diff)
    bad = ~torch.isfinite(sq)
    if bool(bad.any()):  # squares overflow the input dtype: rescaled norms
        sq[bad] = row_norms(diff[bad]).square()
    return sq


def distances_to(x: torch.Tensor, v: torch.Tensor,
                 center: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """[n] float64 ``‖x_i − v‖`` for finite rows ``x`` [n, d] and a finite ``v`` [d].

    ``center`` = ``(c, ‖x_i − c‖²)`` (float64, e.g. this function's squared result for an
    earlier ``v``), default ``(0, ‖x_i‖²)``. Then ``‖x_i − v‖² = ‖x_i − c‖² −
    2(x_i·u − c·u) + ‖u‖²`` with ``u = v − c``: one matrix-vector product instead of an
    ``[n, d]`` difference (on CPU a fresh 400 MB temporary costs more in page faults than
    the arithmetic). Rows where that expansion cancels (the result is small against its
    terms, see :data:`CANCELLATION`) or overflows are recomputed directly from ``x_i − v``.
    Matrices of at most :data:`SMALL_MATRIX` entries take ``x − v`` directly (fewer ops).
    """
    n, d = x.shape
    if x.numel() <= SMALL_MATRIX:  # the difference is a small, cached temporary: direct
        diff = x - v
        out = torch.linalg.vector_norm(diff, dim=1).to(torch.float64)
        bad = ~torch.isfinite(out)
        if bool(bad.any()):
            out[bad] = row_norms(diff[bad])
        return out
    if center is None:
        c, base = None, row_sq_norms(x)
        u = v
    else:
        c, base = center
        u = v - c
    uu = row_sq_norms(u.reshape(1, -1))[0]
    dots = (x @ u).to(torch.float64)
    c_norm = 0.0
    if c is not None:  # c·u rounds like x_i·u: covered by the 2‖u‖·‖c‖ term below
        dots -= float(torch.dot(c, u))
        c_norm = float(torch.linalg.vector_norm(c))
    sq = base - 2.0 * dots + uu
    terms = base + uu + 2.0 * uu.sqrt() * (base.sqrt() + 2.0 * c_norm)
    redo = ~(torch.isfinite(sq) & (sq >= CANCELLATION * terms))
    if bool(redo.any()):
        idx = torch.nonzero(redo).squeeze(1)
        sq[idx] = _direct_sq_distances(x[idx], v)
    return sq.clamp_(min=0.0).sqrt_()


def _center_row(x: torch.Tensor) -> torch.Tensor:
    """The row of median norm among finite rows of ``x`` (all rows finite here)."""
    norms = torch.linalg.vector_norm(x, dim=1)
    norms = torch.nan_to_num(norms, posinf=torch.finfo(norms.dtype).max)
    order = torch.argsort(norms, stable=True)
    return x[order[(x.shape[0] - 1) // 2]]


def pairwise_sq_distances(updates: torch.Tensor, center: bool = True) -> torch.Tensor:
    """[n, n] float64 squared Euclidean distances by one Gram matrix.

    ``‖a−c‖² + ‖b−c‖² − 2(a−c)·(b−c)`` with ``c`` a typical row (median norm) when ``center``
    (translation-invariant, with much less cancellation when updates share a large common
    component), clamped at 0, exact 0 on the diagonal. Rows holding NaN/Inf are at distance
    ``+inf`` from every other row (0 from themselves). Finite rows of huge magnitude get
    huge, finite float64 distances (see :func:`gram`).
    """
    n = updates.shape[0]
    ok = finite_rows(updates)
    all_ok = bool(ok.all())
    x = updates if all_ok else updates[ok]
    g = gram(x, _center_row(x) if center and x.shape[0] > 0 else None)
    sq = torch.diagonal(g)
    dist = (sq[:, None] + sq[None, :] - 2.0 * g).clamp_(min=0.0)
    dist.fill_diagonal_(0.0)
    if all_ok:
        return dist
    out = torch.full((n, n), float("inf"), dtype=torch.float64, device=updates.device)
    idx = torch.nonzero(ok).squeeze(1)
    out[idx[:, None], idx[None, :]] = dist
    out.fill_diagonal_(0.0)
    return out


# 1 − |cos| below this: the float32 Gram's rounding (~1e-6 absolute on cos) is no longer
# small against 1 − cos, so the cosines are recomputed accurately (:func:`_accurate_cosine`)
NEAR_PARALLEL = 1e-3


def _unit_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows of ``x`` scaled to unit L2 norm in float64, [n] bool: the row is non-zero).
    Overflow-safe: rows are divided by their max-abs value first."""
    x64 = x.to(torch.float64)
    x64 = x64 / row_scale(x64)[:, None]
    norm = torch.linalg.vector_norm(x64, dim=1)
    nonzero = norm > 0
    return x64 / torch.where(nonzero, norm, torch.ones_like(norm))[:, None], nonzero


def _accurate_cosine(x: torch.Tensor) -> torch.Tensor:
    """[n, n] float64 cosines of the finite rows ``x``, accurate when rows are nearly
    parallel: cos = 1 − ‖u_i − u_j‖²/2 on the unit rows u in float64, the squared distances
    from the Gram matrix of the rows centred on a typical one (no cancellation against the
    shared direction), so 1 − cos keeps its relative accuracy down to ~1e-16."""
    u, nonzero = _unit_rows(x)
    cos = (1.0 - 0.5 * pairwise_sq_distances(u)).clamp_(-1.0, 1.0)
    zero = ~nonzero
    if bool(zero.any()):
        cos[zero, :] = 0.0
        cos[:, zero] = 0.0
    return cos


def pairwise_cosine(updates: torch.Tensor) -> torch.Tensor:
    """[n, n] float64 cosine similarities in [-1, 1], overflow-safe and accurate.

    One Gram matrix in the input dtype; when a pair is nearly parallel (1 − |cos| <
    :data:`NEAR_PARALLEL`), where that Gram matrix's rounding swamps 1 − cos, the cosines
    are recomputed from unit rows in float64 by centred distances (:func:`_accurate_cosine`).
    Zero rows and non-finite rows have similarity 0 to every row (1 to themselves).
    """
    n = updates.shape[0]
    ok = finite_rows(updates)
    out = torch.zeros(n, n, dtype=torch.float64, device=updates.device)
    if bool(ok.any()):
        idx = torch.nonzero(ok).squeeze(1)
        x = updates if bool(ok.all()) else updates[idx]
        g = gram(x)
        norm = torch.sqrt(torch.diagonal(g).clone())
        bad = ~torch.isfinite(norm)
        if bool(bad.any()):  # beyond float64 range: fall back to normalised rows
            norm = row_norms(x)
            xs = x / torch.where(norm > 0, norm, torch.ones_like(norm)).to(x.dtype)[:, None]
            g = gram(xs)
            norm = torch.sqrt(torch.diagonal(g).clone())
        safe = torch.where(norm > 0, norm, torch.ones_like(norm))
        cos = (g / safe[:, None] / safe[None, :]).clamp_(-1.0, 1.0)
        off = cos.abs().fill_diagonal_(0.0)
        if x.shape[0] > 1 and bool((off > 1.0 - NEAR_PARALLEL).any()):
            cos = _accurate_cosine(x)
        out[idx[:, None], idx[None, :]] = cos
    out.fill_diagonal_(1.0)
    return out


def cosine_to(updates: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """[n] float64 cosine similarity of each row to ``reference`` [d], overflow-safe and
    accurate (rows nearly parallel to the reference are recomputed as in
    :func:`pairwise_cosine`).

    0 for non-finite rows, zero rows, or a zero/non-finite reference.
    """
    n = updates.shape[0]
    out = torch.zeros(n, dtype=torch.float64, device=updates.device)
    ok = finite_rows(updates)
    if not bool(ok.any()) or not bool(torch.isfinite(reference).all()):
        return out
    ref_scale = float(reference.abs().amax())  # vector_norm(ord=inf), faster (row_scale)
    if ref_scale == 0.0:
        return out
    ref = (reference / ref_scale).to(updates.dtype)
    ref_norm = float(torch.linalg.vector_norm(ref.to(torch.float64)))
    idx = torch.nonzero(ok).squeeze(1)
    x = updates if bool(ok.all()) else updates[idx]
    dots = (x @ ref).to(torch.float64)
    bad = ~torch.isfinite(dots)
    if bool(bad.any()):  # rows too large for a dot product in the input dtype
        xb = x[bad]
        sb = row_scale(xb)
        dots[bad] = ((xb / sb[:, None]) @ ref).to(torch.float64) * sb.to(torch.float64)
    norms = row_norms(x)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    cos = (dots / (safe * ref_norm)).clamp_(-1.0, 1.0)
    near = (cos.abs() > 1.0 - NEAR_PARALLEL) & (norms > 0)
    if bool(near.any()):  # 1 − cos from the distance of unit vectors, in float64
        u, _ = _unit_rows(x[near])
        r, _ = _unit_rows(reference.reshape(1, -1))
        diff = u - r
        cos[near] = (1.0 - 0.5 * (diff * diff).sum(dim=1)).clamp(-1.0, 1.0)
    out[idx] = torch.where(norms > 0, cos, torch.zeros_like(cos))
    return out


def sort_columns(updates: torch.Tensor) -> torch.Tensor:
    """Each column sorted ascending (``[n, d]``). On CPU numpy's vectorised sort along axis 0
    is several times faster than ``torch.sort(dim=0)``; elsewhere torch sorts on device."""
    if updates.device.type == "cpu" and updates.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.sort(updates.detach().numpy(), axis=0))
    return torch.sort(updates, dim=0).values


def coordinate_median(updates: torch.Tensor) -> torch.Tensor:
    """[d] coordinate-wise median of the rows (mean of the two middle values for even n).

    Callers pass finite rows; the zero vector for an empty matrix.
    """
    n, d = updates.shape
    if n == 0:
        return torch.zeros(d, dtype=updates.dtype, device=updates.device)
    if n == 1:
        return updates[0].clone()
    srt = sort_columns(updates)
    if n % 2 == 1:
        return srt[n // 2].clone()
    return srt[n // 2 - 1] * 0.5 + srt[n // 2] * 0.5


MEDIAN_BLOCK = 1 << 14  # columns per block of closest_to_median: a [θ, 16384] slice stays in cache


def _topk_closest(s: torch.Tensor, beta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [d], row indices [β, d]) of the β values of each column of ``s`` closest to
    the column's median, by ``topk`` on the distances (the definition)."""
    keep = torch.topk((s - coordinate_median(s)).abs(), beta, dim=0, largest=False).indices
    return torch.gather(s, 0, keep).mean(dim=0), keep


def closest_to_median(x: torch.Tensor, chosen: torch.Tensor, beta: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(aggregate [d], counts [θ]): per coordinate, the mean of the β values of the rows
    ``x[chosen]`` closest to their median (Bulyan's second step, MeaMed), and how many
    coordinates each chosen row contributes to (int64, in ``chosen``'s order).

    In a sorted column the β values nearest the median are a window of β consecutive
    values, the one whose larger end distance r is smallest; when that set is unique (the
    two values just outside the window lie farther than r) it is exactly the set ``topk``
    of the distances selects, and its members are the rows within r of the median. So each
    block of columns is sorted (numpy, fast along axis 0) and needs no ``topk``; columns
    where a value outside the window ties at distance r (e.g. repeated values) go through
    ``topk`` as the definition states, so ties resolve as before.
    """
    theta, d = len(chosen), x.shape[1]
    if d == 0 or x.device.type != "cpu":
        aggregate, keep = _topk_closest(x[chosen], beta)
        return aggregate, torch.bincount(keep.reshape(-1), minlength=theta)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~15 small ops per block: a thread team only waits (6× slower)
    try:
        return _closest_to_median_blocks(x, chosen, beta)
    finally:
        torch.set_num_threads(threads)


def _closest_to_median_blocks(x: torch.Tensor, chosen: torch.Tensor, beta: int
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    theta, d = len(chosen), x.shape[1]
    aggregate = torch.empty(d, dtype=x.dtype, device=x.device)
    counts = torch.zeros(theta, dtype=torch.int64, device=x.device)
    windows = theta - beta + 1
    offsets = torch.arange(beta, device=x.device)[:, None]
    for start in range(0, d, MEDIAN_BLOCK):
        s = x[:, start:start + MEDIAN_BLOCK].index_select(0, chosen)     # [θ, w], rows in θ order
        srt = sort_columns(s)
        med = (srt[theta // 2] if theta % 2 else
               srt[theta // 2 - 1] * 0.5 + srt[theta // 2] * 0.5)  # = coordinate_median(s)
        dist = (srt - med).abs()                                  # as topk would see them
        radius, j = torch.maximum(dist[:windows], dist[beta - 1:]).min(dim=0)
        inf = dist.new_full((1, dist.shape[1]), float("inf"))
        padded = torch.cat([inf, dist, inf])                      # neighbours of the window
        outside = torch.minimum(padded.gather(0, j[None]), padded.gather(0, (j + beta + 1)[None]))
        tied = outside[0] <= radius
        aggregate[start:start + s.shape[1]] = srt.gather(0, j[None] + offsets).mean(dim=0)
        member = (s - med).abs() <= radius
        if bool(tied.any()):
            cols = torch.nonzero(tied).squeeze(1)
            member[:, cols] = False
            agg_t, keep = _topk_closest(s[:, cols], beta)
            aggregate[start + cols] = agg_t
            counts += torch.bincount(keep.reshape(-1), minlength=theta)
        counts += member.sum(dim=1)
    return aggregate, counts


def robust_zscores(values: torch.Tensor) -> torch.Tensor:
    """(v − median) / (1.4826·MAD) of a 1-D tensor, float64; non-finite values give +inf.

    When the MAD is 0 (half the values equal), deviations are scaled by the mean absolute
    deviation instead, and by 1 if that is 0 too, so identical values score 0.
    """
    v = values.to(torch.float64)
    fin = torch.isfinite(v)
    out = torch.full_like(v, float("inf"))
    if not bool(fin.any()):
        return out
    vf = v[fin]
    med = torch.quantile(vf, 0.5)
    dev = (vf - med).abs()
    mad = 1.4826 * torch.quantile(dev, 0.5)
    if not bool(mad > 0):
        mad = dev.mean() * 1.2533  # mean absolute deviation → σ under normality
    if not bool(mad > 0):
        mad = torch.ones((), dtype=torch.float64, device=v.device)
    out[fin] = (vf - med) / mad
    return out


def scatter_rows(values: torch.Tensor, index: torch.Tensor, n: int,
                 fill: float | bool = 0) -> torch.Tensor:
    """Length-``n`` tensor holding ``values`` at positions ``index`` and ``fill`` elsewhere."""
    out = torch.full((n,), fill, dtype=values.dtype, device=values.device)
    out[index] = values
    return out


def normalized_weights(weights: torch.Tensor) -> torch.Tensor:
    """``weights / Σ weights`` (non-negative, finite); the zero vector when the sum is 0."""
    w = torch.nan_to_num(weights, nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0)
    total = w.sum()
    return w / total if bool(total > 0) else torch.zeros_like(w)


def mean_of(updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ w_i u_i / Σ w_i`` in ``updates.dtype`` for non-negative ``weights`` [n].

    Rows with zero weight never contribute, even when they hold NaN; the zero vector when
    every weight is zero. One matrix-vector product (no row copy) when the zero-weight rows
    are finite.
    """
    n, d = updates.shape
    w = normalized_weights(weights.to(torch.float64))
    keep = w > 0
    if not bool(keep.any()):
        return torch.zeros(d, dtype=updates.dtype, device=updates.device)
    if bool(keep.all()) or bool(finite_rows(updates)[~keep].all()):
        return w.to(updates.dtype) @ updates
    idx = torch.nonzero(keep).squeeze(1)
    return w[idx].to(updates.dtype) @ updates[idx]
