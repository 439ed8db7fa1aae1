"""Every registered defense and attack passes byzbench.testing's conformance checks, and
the checks themselves catch what they are meant to catch."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from byzbench.defenses.base import Defense, RoundContext, Verdict
from byzbench.registry import ATTACKS, DEFENSES
from byzbench.testing import ConformanceError, check_attack, check_defense


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_conforms(name):
    check_defense(DEFENSES.get(name))


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_conforms(name):
    check_attack(ATTACKS.get(name))


@pytest.mark.parametrize("name, params", [("clustering", {"metric": "cosine"}),
                                          ("sign_statistics", {"clusterer": "kmeans"}),
                                          ("sign_statistics", {"cluster_all": True})])
def test_the_other_clustering_settings_conform(name, params):
    """The non-default paths of the vectorised KMeans and MeanShift (huge and non-finite
    attacker rows included) keep the contract too."""
    check_defense(DEFENSES.get(name), params)


def test_a_pipeline_with_parameters_conforms():
    check_defense(DEFENSES.get("pipeline"),
                  {"layers": ["norm_clip", {"name": "trimmed_mean", "beta": 0.2}]})


class _Mean(Defense):
    """Plain mean of the rows it is handed, for exercising the conformance checks."""

    paper: ClassVar[str] = "none (a test fixture)"
    stateless: ClassVar[bool] = True

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        n = updates.shape[0]
        w = torch.full((n,), 1.0 / n)
        return Verdict(aggregate=w @ updates, weights=w, flagged=None)


class _ShortFlags(_Mean):
    """Returns one flag too few: the verdict check must name the field."""

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        v = super().aggregate(updates, ctx)
        return Verdict(aggregate=v.aggregate, weights=v.weights,
                       flagged=torch.zeros(updates.shape[0] - 1, dtype=torch.bool))


class _Counting(_Mean):
    """Counts its rounds but claims to be stateless."""

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        self.rounds = getattr(self, "rounds", 0) + 1
        return super().aggregate(updates, ctx)


class _Leaky(_Mean):
    """Keeps a running sum and lets a preview change it."""

    stateless: ClassVar[bool] = False

    def preview(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        return self(updates, ctx)

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        self.total = getattr(self, "total", 0.0) + float(updates.sum())
        return super().aggregate(updates, ctx)


class _Undocumented(_Mean):
    """A plain mean whose author forgot to cite where the rule comes from."""

    paper: ClassVar[str] = ""


def test_plain_mean_conforms_except_for_huge_rows():
    # the mean is not robust: a 3e38 row among ten overflows nothing, but ±3e38 rows make
    # its mean huge yet finite; the check only asks for a finite aggregate
    check_defense(_Mean)


@pytest.mark.parametrize(("cls", "message"), [
    (_ShortFlags, r"flagged has shape \(\d+,\), expected \(\d+,\)"),
    (_Counting, "declares stateless"),
    (_Leaky, "preview: changed the defense's state"),
    (_Undocumented, "paper"),
])
def test_the_checks_catch_broken_defenses(cls, message):
    with pytest.raises(ConformanceError, match=message):
        check_defense(cls)
