"""Rounds and features of sign_statistics shared by the MeanShift and KMeans tests: random
sign features, and the defense's verdict recomputed with scikit-learn doing the clustering."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from byzbench.defenses.base import DefenseSetup, RoundContext
from byzbench.defenses.geometry import row_norms
from byzbench.defenses.sign_statistics import SignStatistics, SignStatisticsParams, sign_features


def random_sign_features(rng: np.random.Generator, m: int) -> np.ndarray:
    """[m, 3] sign features of a random round: up to m/2 attackers with skewed signs, and
    sometimes a share of coordinates exactly zero."""
    n_coords = int(rng.integers(20, 400))
    u = torch.from_numpy(rng.standard_normal((m, n_coords)).astype(np.float32))
    f = int(rng.integers(0, m // 2 + 1))
    u[:f] = -u[:f].abs() * float(rng.uniform(0.5, 5.0))     # attackers: skewed signs
    if rng.random() < 0.4:
        u[:, torch.from_numpy(rng.random(n_coords) < 0.3)] = 0.0
    return sign_features(u, None).numpy()


def sign_statistics_flags(p: SignStatisticsParams, seed: int,
                          cluster: Callable[[np.ndarray, int], np.ndarray]
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One 20 × 3,000 round (2–6 attackers with larger, negative updates) through the
    defense: (its flags, the flags of its own steps with ``cluster(features, random_state)``
    giving the labels instead, the rows the clustering kept)."""
    g = torch.Generator().manual_seed(100 + seed)
    m, d = 20, 3000
    x = torch.randn(m, d, generator=g) * 0.01 + 0.002 * (seed % 3)
    f = 2 + seed % 5
    x[:f] = -3.0 * x[:f].abs()
    defense = SignStatistics(p)
    defense.setup(DefenseSetup(num_clients=m, clients_per_round=m, f=f, dim=d, seed=0,
                               device=torch.device("cpu")))
    ctx = RoundContext(round=0, client_ids=torch.arange(m), num_samples=torch.ones(m), f=f,
                       generator=torch.Generator().manual_seed(seed),
                       global_params=torch.zeros(d))
    flagged = defense(x, ctx).flagged
    # the defense's own steps: norm filter, coordinate draw, then the clustering's seed
    g = torch.Generator().manual_seed(seed)
    norms = row_norms(x)
    med = float(torch.quantile(norms, 0.5))
    by_norm = (norms / med > p.norm_low) & (norms / med < p.norm_high)
    k = max(1, int(p.coord_fraction * d))
    cols = torch.randperm(d, generator=g)[:k] if k < d else None
    feats = sign_features(x, cols).numpy()
    random_state = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
    labels = cluster(feats, random_state)
    valid = labels[labels >= 0]
    by_sign = (torch.from_numpy(labels == np.bincount(valid).argmax()) if valid.size
               else torch.ones(m, dtype=torch.bool))
    return flagged, ~(by_norm & by_sign), by_sign
