"""Data-poisoning attacks: the malicious clients train honestly on poisoned samples.

The engine calls :meth:`~byzbench.attacks.base.Attack.poison_client_data` (by default
:meth:`poison_data`) once with the malicious clients' training samples and trains them on
the poisoned copy in the rounds where the attack is active (``start_round`` … ``end_round``);
in the other rounds they train on their clean samples. The backdoors with other triggers or
update constraints (dba, blended, neurotoxin, pgd) are in :mod:`byzbench.attacks.backdoors`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, model_validator

from byzbench.attacks._common import malicious_mask
from byzbench.attacks._trigger import PatchAttack, PatchParams
from byzbench.attacks.base import Attack, AttackContext, AttackParams, AttackSetup, Stage
from byzbench.registry import ATTACKS


class LabelFlipParams(AttackParams):
    source: int | None = Field(
        None, ge=0, description="targeted flip: relabel only this class (needs target); "
                                "default: flip every label y to C-1-y")
    target: int | None = Field(
        None, ge=0, description="targeted flip: the label given to samples of class source")

    @model_validator(mode="after")
    def _pair(self) -> LabelFlipParams:
        if (self.source is None) != (self.target is None):
            raise ValueError("label_flip: give both 'source' and 'target' for a targeted "
                             "flip, or neither for the full flip y -> C-1-y")
        if self.source is not None and self.source == self.target:
            raise ValueError("label_flip: 'source' and 'target' must differ")
        return self


@ATTACKS.register("label_flip")
class LabelFlip(Attack):
    """Label flipping (Tolpegin et al., ESORICS 2020): malicious clients relabel every sample
    y → C−1−y, or, with ``source``/``target``, only class ``source`` → ``target``."""

    stage: ClassVar[Stage] = "data"
    paper: ClassVar[str] = ("Tolpegin, Truex, Gursoy, Liu. Data Poisoning Attacks Against "
                            "Federated Learning Systems. ESORICS 2020")
    Params: ClassVar[type[LabelFlipParams]] = LabelFlipParams

    def setup(self, setup: AttackSetup) -> None:
        super().setup(setup)
        c = setup.num_classes
        for key in ("source", "target"):
            value = getattr(self.params, key)
            if value is not None and value >= c:
                raise ValueError(f"label_flip: {key}={value} is not a class of this dataset "
                                 f"(classes 0..{c - 1})")

    def _num_classes(self, y: torch.Tensor) -> int:
        cell = getattr(self, "cell", None)
        return cell.num_classes if cell is not None else int(y.max()) + 1

    def poison_data(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        if p.source is None:
            return x, (self._num_classes(y) - 1 - y).to(y.dtype)
        return x, torch.where(y == p.source, torch.full_like(y, p.target), y)


class BackdoorParams(PatchParams):
    boost: float = Field(
        1.0, gt=0.0, le=1e6,
        description="model replacement (Bagdasaryan et al.): the malicious update is "
                    "multiplied by this factor; 1 = no boost")


def boost_rows(updates: torch.Tensor, ctx: AttackContext, factor: float) -> torch.Tensor:
    """The malicious rows of ``updates`` multiplied by ``factor`` (model replacement)."""
    if factor == 1.0:
        return updates
    mal = malicious_mask(ctx, updates.device)
    return torch.where(mal.unsqueeze(1), updates * factor, updates)


@ATTACKS.register("backdoor")
class Backdoor(PatchAttack):
    """BadNets backdoor (Gu et al. 2017) with optional model replacement (Bagdasaryan et
    al., AISTATS 2020): a square pixel patch is stamped on ``poison_fraction`` of the
    malicious clients' samples, which are relabelled ``target``; their update is × ``boost``.

    Images are ``[C, H, W]`` or ``[H, W]``; flat inputs ``[D]`` are treated as a square
    ``√D × √D`` image (the 8×8 digits flattened for logreg/MLP)."""

    paper: ClassVar[str] = ("Gu, Dolan-Gavitt, Garg. BadNets: Identifying Vulnerabilities in "
                            "the Machine Learning Model Supply Chain. arXiv 2017; Bagdasaryan, "
                            "Veit, Hua, Estrin, Shmatikov. How To Backdoor Federated Learning. "
                            "AISTATS 2020")
    Params: ClassVar[type[BackdoorParams]] = BackdoorParams

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return boost_rows(updates, ctx, self.params.boost)
