"""Differential privacy of a cell: DP-FedAvg's clipping and Gaussian noise, and its accountant.

DP-FedAvg (McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private Recurrent
Language Models", ICLR 2018): every client update Δ_i is clipped to L2 norm C,
Δ_i · min(1, C / ‖Δ_i‖), and Gaussian noise of standard deviation σ·C makes the released
quantity differentially private. Two places for the noise (``privacy.dp.mode``):

``central``
    The server clips every update it receives (so every row, the attack's included, moves
    the aggregate by a bounded amount), the defense aggregates the clipped rows, and the
    server adds N(0, (σ·C/m)²) per coordinate to the aggregate of the round's m clients —
    DP-FedAvg's noise on the sum, σ·C, divided by the fixed denominator m. Privacy unit:
    one client's whole data (user-level DP), neighbouring = add/remove one client; the
    released sum of m clipped updates has L2 sensitivity C. The ε holds exactly for that
    clipped-sum (fixed-denominator mean) mechanism: ``fedavg`` with ``weighting: uniform``.
    For sample-weighted FedAvg the sensitivity is C·max_i w_i / Σ w (equal partitions:
    C/m). For a robust rule the accounting is that of the clipped-sum mechanism, *not* of
    the released robust aggregate: it bounds the robust aggregate only if one client can
    move it by at most C/m. Mean-like rules do (a trimmed mean of m − 2b rows moves by at
    most 2C/(m − 2b) per client, close to it), selection rules do not (Krum or the median
    can switch to another client's row: a move of up to 2C, 2m times the bound), so for
    them the stated ε is the noise level of the clipped-sum mechanism, not a guarantee.

``local``
    Each honest client clips its own update and adds N(0, (σ·C)²) before it leaves the
    client — so an attack that knows the honest updates (``full`` knowledge) sees them
    noised, as the server and any eavesdropper do; the noise is drawn before the attack
    writes its rows, before signing and before the defense. Malicious clients are the
    attack's: they skip both clipping and noise (the noise cannot be verified, and a
    poisoned row gains nothing from it). Privacy unit: one
    client's release per round; a client's update can be replaced by any other of norm ≤ C,
    so the L2 sensitivity of its clipped update is 2C (replace-one, the local-DP relation:
    Dwork & Roth, The Algorithmic Foundations of Differential Privacy, 2014, Def. 3.8 with
    the client's whole data as the record; as in LDP-FedAvg analyses, e.g. Truex et al.,
    LDP-Fed, EdgeSys 2020) and each release is a Gaussian mechanism with noise multiplier
    σ/2. There is no amplification by subsampling (the server sees who takes part), and ε
    composes over every round (the worst-case client, one taking part in every round).

Accountant: Google's ``dp-accounting`` RDP accountant (Mironov, CSF 2017; Mironov, Talwar &
Zhang 2019 for the subsampled Gaussian), one composition step per round: central mode
composes a Poisson-subsampled Gaussian with q = clients_per_round / clients (a plain
Gaussian when every client takes part). The engine samples a *fixed* number of clients per
round; Poisson accounting at q = m/N is the standard approximation for it (McMahan et al.
2018 sample users independently with probability q). A target ε for the run gives σ by
``dp_accounting.mechanism_calibration.calibrate_dp_mechanism``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from byzbench.config import DPConfig

if TYPE_CHECKING:
    import dp_accounting
    from dp_accounting import rdp

# dp-accounting (with the parts of scipy it loads) takes ~0.9 s to import: only cells with
# DP import it, and a cell's executor imports it before the cell's clock starts
LAZY_IMPORTS: tuple[str, ...] = ("dp_accounting",)

# integer orders: the subsampled Gaussian's RDP has a closed form there (fractional orders
# below 2 fail to converge at large sampling rates, and are slow)
RDP_ORDERS: tuple[int, ...] = (*range(2, 65), 80, 96, 128, 160, 192, 256)
CALIBRATION_TOL = 1e-4


def _accountant() -> rdp.RdpAccountant:
    from dp_accounting import rdp

    return rdp.RdpAccountant(orders=list(RDP_ORDERS))


def round_event(mode: str, sigma: float, q: float) -> dp_accounting.DpEvent:
    """The privacy event of one round for a noise multiplier ``sigma`` (see the module doc):
    central → (Poisson-subsampled at rate q) Gaussian(σ); local → Gaussian(σ/2)."""
    import dp_accounting

    if mode == "local":
        return dp_accounting.GaussianDpEvent(sigma / 2.0)
    gaussian = dp_accounting.GaussianDpEvent(sigma)
    return gaussian if q >= 1.0 else dp_accounting.PoissonSampledDpEvent(q, gaussian)


@functools.lru_cache(maxsize=256)
def epsilons(mode: str, sigma: float, q: float, rounds: int, delta: float
             ) -> tuple[float, ...]:
    """ε at ``delta`` after rounds 1, 2, …, ``rounds`` (cumulative), from the RDP accountant
    composing one :func:`round_event` per round."""
    accountant = _accountant()
    event = round_event(mode, sigma, q)
    out = []
    for _ in range(rounds):
        accountant.compose(event)
        out.append(float(accountant.get_epsilon(delta)))
    return tuple(out)


@functools.lru_cache(maxsize=256)
def calibrate_sigma(mode: str, epsilon: float, delta: float, q: float, rounds: int) -> float:
    """The smallest noise multiplier σ whose run of ``rounds`` rounds spends at most
    ``epsilon`` at ``delta`` (dp-accounting's calibration, Brent's method on σ)."""
    import dp_accounting
    from dp_accounting import mechanism_calibration

    return float(mechanism_calibration.calibrate_dp_mechanism(
        _accountant,
        lambda s: dp_accounting.SelfComposedDpEvent(round_event(mode, s, q), rounds),
        epsilon, delta,
        mechanism_calibration.LowerEndpointAndGuess(1e-3, 1.0),
        tol=CALIBRATION_TOL))


def clip_rows(updates: torch.Tensor, clip: float, rows: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Each row of ``updates`` [n, d] scaled to L2 norm at most ``clip`` (a new tensor);
    rows already inside — and rows outside the bool mask ``rows``, when given — are
    returned bit for bit. Non-finite rows stay non-finite (the defense handles them)."""
    norms = torch.linalg.vector_norm(updates, dim=1, keepdim=True)
    over = norms > clip
    if rows is not None:
        over = over & rows.to(over.device).reshape(-1, 1)
    return torch.where(over, updates * (clip / norms), updates)


@dataclass(frozen=True)
class DPMechanism:
    """DP-FedAvg (McMahan et al., ICLR 2018) for one cell: clipping norm C, noise multiplier
    σ (given, or calibrated from a target ε for the run by the ``dp-accounting`` RDP
    accountant) and the cumulative ε at δ after each round. See the module doc for what ε
    means in ``central`` and ``local`` mode."""

    mode: str
    clip: float
    sigma: float
    delta: float
    epsilons: tuple[float, ...]

    @classmethod
    def from_config(cls, config: DPConfig, clients: int, participants: int, rounds: int
                    ) -> DPMechanism | None:
        """The cell's mechanism, or None when ``config.mode`` is ``none``."""
        if config.mode == "none":
            return None
        q = participants / clients
        sigma = config.sigma
        if sigma is None:
            assert config.epsilon is not None  # DPConfig's validator
            sigma = calibrate_sigma(config.mode, config.epsilon, config.delta, q, rounds)
        return cls(mode=config.mode, clip=config.clip, sigma=float(sigma),
                   delta=config.delta,
                   epsilons=epsilons(config.mode, float(sigma), q, rounds, config.delta))

    @property
    def epsilon(self) -> float:
        """ε at δ of the whole run."""
        return self.epsilons[-1]

    def client_side(self, updates: torch.Tensor, honest: torch.Tensor,
                    generator: torch.Generator) -> torch.Tensor:
        """What leaves the clients: ``central`` → every row clipped (the norm bound the
        server enforces, applied where the row is formed so that signatures cover it);
        ``local`` → honest rows (bool mask ``honest`` [n]) clipped and noised with std σ·C,
        malicious rows left as they are (the attack's). The noise is drawn on the host from
        ``generator`` for all n rows (so it does not depend on which rows are honest) and
        copied to the updates' device."""
        if self.mode == "central":
            return clip_rows(updates, self.clip)
        honest = honest.to(updates.device).bool()
        clipped = clip_rows(updates, self.clip, honest)
        noise = torch.randn(updates.shape, generator=generator, dtype=torch.float32)
        noise = noise.to(updates.device, updates.dtype, non_blocking=True)
        return torch.where(honest.unsqueeze(1), clipped + (self.sigma * self.clip) * noise,
                           updates)

    def server_side(self, aggregate: torch.Tensor, m: int, generator: torch.Generator
                    ) -> torch.Tensor:
        """``central``: the aggregate of the round's ``m`` clients plus N(0, (σ·C/m)²) per
        coordinate; ``local``: the aggregate unchanged."""
        if self.mode != "central":
            return aggregate
        noise = torch.randn(aggregate.shape, generator=generator, dtype=torch.float32)
        noise = noise.to(aggregate.device, aggregate.dtype, non_blocking=True)
        return aggregate + (self.sigma * self.clip / m) * noise


__all__ = ["DPMechanism", "calibrate_sigma", "clip_rows", "epsilons", "round_event"]
