"""Reference implementations of attack kernels as they were before the speed work (issue 16).

The tests check that the fast kernels return identical values; ``benchmarks/
bench_attack_kernels.py`` times both side by side. Not a test module (no ``test_`` prefix).
"""

from __future__ import annotations

import torch

from byzbench.attacks.model import halving_search


def reference_column_std(rows: torch.Tensor, unbiased: bool = True,
                         mean: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.std`` over dim 0 (zeros for a single row, as the attacks treat it); ``mean``
    is accepted for the fast kernel's signature and unused."""
    if rows.shape[0] < 2:
        return torch.zeros_like(rows[0])
    return rows.std(dim=0, correction=1 if unbiased else 0)


def reference_search_in(attack, b: torch.Tensor, mean: torch.Tensor, p: torch.Tensor,
                        out_dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    """The min-max/min-sum γ search before the cached-scalar rewrite: every step recomputes
    the ``[k, d]`` distances to the candidate, the threshold from ``torch.cdist``."""
    p_ = attack.params
    pairwise = torch.cdist(b, b, compute_mode="donot_use_mm_for_euclid_dist").square()
    limit = attack.threshold(pairwise) * (1 - 1e-12)

    def ok(gamma: float) -> bool:
        mal = attack.candidate(mean, p, gamma, out_dtype)
        return bool(attack.objective((b - mal).square().sum(dim=1)) <= limit)

    good = halving_search(ok, p_.gamma_init, p_.grow, p_.max_steps, p_.tolerance)
    return attack.candidate(mean, p, good, out_dtype), good


def reference_put_rows(updates: torch.Tensor, mask: torch.Tensor, new: torch.Tensor
                       ) -> torch.Tensor:
    """``put_rows`` before: one broadcasting ``torch.where`` over the ``[n, d]`` matrix."""
    new = new.to(updates.dtype)
    if new.dim() == 1:
        new = new.unsqueeze(0)
    return torch.where(mask.unsqueeze(1), new, updates)


def reference_reference_rows(updates: torch.Tensor, ctx) -> torch.Tensor:
    """``reference_rows`` before: boolean-mask indexing."""
    ref = ctx.reference.to(updates.device)
    if not bool(ref.any()):
        ref = ctx.malicious.to(updates.device)
    return updates[ref]
