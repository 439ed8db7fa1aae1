"""Mean around median (Xie, Koyejo & Gupta 2018), by hand and against its definition."""

from __future__ import annotations

import pytest
import torch

from byzbench.defenses.base import RoundContext
from byzbench.defenses.meamed import Meamed


def ctx(n: int, f: int) -> RoundContext:
    return RoundContext(round=0, client_ids=torch.arange(n), num_samples=torch.ones(n), f=f,
                        generator=torch.Generator().manual_seed(0),
                        global_params=torch.zeros(2))


def test_meamed_by_hand():
    # column 0: median 2.5, distances 1.5 .5 .5 7.5 → the n − f = 3 closest: 1 2 3 → 2
    # column 1: median 0, distances 0 0 5 4 → 0 0 −4 → −4/3
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 5.0], [10.0, -4.0]])
    v = Meamed()(x, ctx(4, 1))
    assert torch.allclose(v.aggregate, torch.tensor([2.0, -4.0 / 3.0]))
    assert v.flagged is None
    assert torch.allclose(v.weights, torch.tensor([2.0, 2.0, 1.0, 1.0]) / 6)
    # f = 0: the plain mean
    assert torch.allclose(Meamed()(x, ctx(4, 0)).aggregate, x.mean(dim=0))


@pytest.mark.parametrize(("n", "f", "d"), [(7, 2, 5), (10, 3, 70_000), (5, 0, 3)])
def test_meamed_matches_its_definition(n, f, d):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n + d), dtype=torch.float64)
    got = Meamed()(x, ctx(n, f)).aggregate
    median = x.median(dim=0).values if n % 2 else x.sort(dim=0).values[n // 2 - 1:n // 2 + 1
                                                                         ].mean(dim=0)
    order = (x - median).abs().argsort(dim=0)[:n - f]             # per coordinate
    expected = torch.gather(x, 0, order).mean(dim=0)
    assert torch.allclose(got, expected)


def test_meamed_nonfinite_and_huge_rows():
    x = torch.ones(6, 3)
    x[0] = float("nan")
    x[1] = 3e38
    v = Meamed()(x, ctx(6, 2))
    assert torch.equal(v.aggregate, torch.ones(3))
    assert v.flagged.tolist() == [True] + [False] * 5 and float(v.weights[1]) == 0.0


def test_meamed_requirement():
    assert "n > f" in Meamed().requirement(3, 3)
    assert Meamed().requirement(3, 2) is None
