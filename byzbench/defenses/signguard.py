"""The seed document's SignGuard: ecdsa → anomaly filter → reputation → multikrum.

Not to be confused with the SignGuard of the literature (Xu et al. 2022, registered here as
``sign_statistics``). This one is a fixed :class:`~byzbench.defenses.pipeline.Composite`:

1. ``ecdsa`` rejects messages that fail signature verification (authenticity);
2. ``anomaly_filter`` flags updates whose norm is abnormally large, or whose cosine
   similarity to the coordinate-wise median is abnormally low, by a robust z-score
   (median and MAD) above ``z_threshold``;
3. ``reputation`` keeps an EMA of each client's agreement with the median, flags clients
   below ``threshold`` and reweights the rest by reputation;
4. ``multikrum`` averages (reputation-weighted) the m lowest Krum scores among survivors.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from byzbench.defenses.base import Defense, DefenseParams, Privacy, RoundContext, Verdict
from byzbench.defenses.distance import MultiKrum, MultiKrumParams
from byzbench.defenses.geometry import (
    coordinate_median,
    cosine_to,
    mean_of,
    normalized_weights,
    robust_zscores,
    row_norms,
)
from byzbench.defenses.pipeline import Composite
from byzbench.defenses.reputation import Reputation, ReputationParams
from byzbench.defenses.signature import Ecdsa, EcdsaParams
from byzbench.registry import DEFENSES


class AnomalyFilterParams(DefenseParams):
    z_threshold: float = Field(
        3.0, gt=0.0, le=100.0,
        description="flag updates whose robust z-score (median/MAD) of the norm is above "
                    "this, or of the cosine to the coordinate median below minus this")
    two_sided: bool = Field(
        False, description="also flag abnormally small norms (z below minus the threshold)")


@DEFENSES.register("anomaly_filter")
class AnomalyFilter(Defense):
    """Robust z-score anomaly filter (robust outlier detection with median and MAD,
    Iglewicz & Hoaglin 1993; used on update norms and cosine similarities as in Xu et al.,
    SignGuard, ICDCS 2022): flag updates with norm z-score > t or cosine-to-median z-score
    < −t; aggregate = weighted mean of the rest."""

    Params: ClassVar[type[AnomalyFilterParams]] = AnomalyFilterParams
    paper: ClassVar[str] = ("Iglewicz & Hoaglin, How to Detect and Handle Outliers, ASQC 1993 "
                            "(robust z-scores); norm and cosine features after Xu et al., "
                            "Byzantine-robust Federated Learning through Collaborative "
                            "Malicious Gradient Filtering, ICDCS 2022")
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=True, needs_server_data=False, keeps_client_state=False,
        note="needs every plaintext update (norms, cosine to the median)")
    stateless: ClassVar[bool] = True

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        reference = coordinate_median(updates)
        z_norm = robust_zscores(row_norms(updates))
        z_cos = robust_zscores(cosine_to(updates, reference))
        t = self.params.z_threshold
        flagged = (z_norm > t) | (z_cos < -t)
        if self.params.two_sided:
            flagged |= z_norm < -t
        w = torch.where(flagged, torch.zeros_like(ctx.weights),
                        ctx.weights).to(updates.device, updates.dtype)
        if not bool(w.sum() > 0) and bool((~flagged).any()):
            w = (~flagged).to(updates.dtype)
        w = normalized_weights(w)
        return Verdict(aggregate=mean_of(updates, w), weights=w, flagged=flagged,
                       diagnostics={"z_norm": z_norm, "z_cos": z_cos})


class SignGuardParams(DefenseParams):
    scheme: Literal["ecdsa-p256", "ed25519"] = Field(
        "ecdsa-p256", description="client signature scheme of the ecdsa layer")
    z_threshold: float = Field(3.0, gt=0.0, le=100.0,
                               description="robust z-score threshold of the anomaly filter")
    decay: float = Field(0.95, ge=0.0, lt=1.0, description="reputation decay")
    threshold: float = Field(0.5, ge=0.0, le=1.0,
                             description="reputation below which a client is flagged")
    m: int | None = Field(None, ge=1, le=100_000,
                          description="multikrum: updates averaged (default n' − f of the "
                                      "survivors)")


@DEFENSES.register("signguard")
class SignGuard(Composite):
    """SignGuard as the seed document defines it: ecdsa signature verification → robust
    z-score anomaly filter (norm, cosine to the coordinate median) → reputation (EMA of
    agreement) → Multi-Krum (Blanchard et al. 2017) on the survivors, reputation-weighted;
    flagged = the union of the layers' flags."""

    Params: ClassVar[type[SignGuardParams]] = SignGuardParams
    paper: ClassVar[str] = ("the seed document's system: ECDSA (FIPS 186-4) + robust z-score "
                            "filter + reputation + Multi-Krum (Blanchard et al., NeurIPS 2017)")
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=True, needs_server_data=False, keeps_client_state=True,
        note="needs every plaintext update; keeps a reputation per client id; stores public "
             "keys")

    def __init__(self, params: SignGuardParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        self._init_layers([
            Ecdsa(EcdsaParams(scheme=p.scheme, weighting="uniform")),
            AnomalyFilter(AnomalyFilterParams(z_threshold=p.z_threshold)),
            Reputation(ReputationParams(decay=p.decay, threshold=p.threshold)),
            MultiKrum(MultiKrumParams(m=p.m)),
        ])
        self.privacy = SignGuard.privacy

    @property
    def label(self) -> str:
        return "signguard"
