"""Fast attack kernels (issue 16) against the implementations they replaced, kept in
``reference_kernels.py``: identical γ and rows for the min-max/min-sum search, torch.std's
values for the column standard deviation."""

from __future__ import annotations

import pytest
import torch
from reference_kernels import (
    reference_column_std,
    reference_put_rows,
    reference_reference_rows,
    reference_search_in,
)

from byzbench.attacks._common import column_std, put_rows, reference_rows
from byzbench.attacks.base import AttackContext
from byzbench.attacks.model import _QuadraticSearch
from byzbench.defenses.base import Verdict
from byzbench.registry import ATTACKS


def make(name: str, **params):
    cls = ATTACKS.get(name)
    return cls(cls.Params(**params))


def ctx_for(n: int, malicious: list[int], knowledge: str = "full", oracle=None
            ) -> AttackContext:
    mal = torch.zeros(n, dtype=torch.bool)
    mal[malicious] = True
    ref = ~mal if knowledge == "full" else mal.clone()
    return AttackContext(round=0, client_ids=torch.arange(n), malicious=mal, reference=ref,
                         generator=torch.Generator().manual_seed(0), defense_name="x",
                         oracle=oracle)


def random_rows(seed: int, k: int | None = None, d: int | None = None) -> torch.Tensor:
    """Benign-like rows over many scales: spread around a common offset, some columns
    constant (zero spread), sizes from a single row up."""
    g = torch.Generator().manual_seed(seed)
    k = k if k is not None else int(torch.randint(1, 25, (1,), generator=g))
    d = d if d is not None else int(torch.randint(1, 120, (1,), generator=g))
    scale = 10 ** float(torch.empty(1).uniform_(-4, 3, generator=g))
    offset = float(torch.empty(1).uniform_(0, 5, generator=g))
    rows = scale * (torch.randn(k, d, generator=g) + offset * torch.randn(d, generator=g))
    if seed % 3 == 0:
        rows[:, : d // 2] = 1.0
    return rows


# ---------------------------------------------------------------------- column std


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("unbiased", [True, False])
def test_column_std_matches_torch_std(dtype, unbiased):
    g = torch.Generator().manual_seed(0)
    rows = (torch.randn(16, 4810, generator=g) * 0.01 + 0.3).to(dtype)
    rows[:, :7] = 0.25  # constant columns: exactly zero spread
    ours, ref = column_std(rows, unbiased), reference_column_std(rows, unbiased)
    assert ours.dtype == dtype
    assert torch.equal(ours[:7], torch.zeros(7, dtype=dtype))
    assert torch.allclose(ours, ref, rtol=1e-6 if dtype == torch.float64 else 1e-5, atol=0)


def test_column_std_small_k_by_hand():
    two = torch.tensor([[1.0, 5.0, 2.0], [3.0, 5.0, -2.0]])
    # k = 2: |x1 − x2| / √2 unbiased, |x1 − x2| / 2 biased
    assert torch.allclose(column_std(two), torch.tensor([2 / 2**0.5, 0.0, 4 / 2**0.5]))
    assert torch.allclose(column_std(two, unbiased=False), torch.tensor([1.0, 0.0, 2.0]))
    assert torch.allclose(column_std(two), two.std(dim=0))
    # k = 1: no spread observable (torch.std would give NaN)
    assert torch.equal(column_std(two[:1]), torch.zeros(3))
    assert torch.equal(reference_column_std(two[:1]), torch.zeros(3))


# ------------------------------------------------------------------ row placement


def test_put_rows_and_reference_rows_match_the_masked_versions():
    g = torch.Generator().manual_seed(4)
    updates = torch.randn(9, 13, generator=g)
    updates[3, 2] = float("nan")
    for malicious in ([0], [2, 3, 8], list(range(9)), []):
        ctx = ctx_for(9, malicious)
        mask = ctx.malicious
        row = torch.randn(13, generator=g, dtype=torch.float64)  # cast to the rows' dtype
        full = torch.randn(9, 13, generator=g)
        for new in (row, full, row[None, :].float(), full[0].expand(9, 13)):
            ours = put_rows(updates, mask, new)
            assert torch.equal(ours.isnan(), reference_put_rows(updates, mask, new).isnan())
            assert torch.equal(ours.nan_to_num(), reference_put_rows(updates, mask, new
                                                                     ).nan_to_num())
            assert ours.dtype == updates.dtype and updates[3, 2].isnan()  # input untouched
        for knowledge in ("full", "partial"):
            ctx = ctx_for(9, malicious, knowledge)
            if bool(ctx.reference.any() or ctx.malicious.any()):
                assert torch.equal(reference_rows(updates, ctx).nan_to_num(),
                                   reference_reference_rows(updates, ctx).nan_to_num())


# ------------------------------------------------------------- min-max / min-sum search


@pytest.mark.parametrize("name", ["minmax", "minsum"])
@pytest.mark.parametrize("kind", ["unit", "sign", "std"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_search_is_identical_to_the_direct_search(name, kind, dtype):
    for seed in range(40):
        rows = random_rows(seed).to(dtype)
        attack = make(name, perturbation=kind, grow=seed % 4 != 1)
        setting = attack.setting(rows)
        out, gamma = attack.search_in(*setting, dtype)
        ref_out, ref_gamma = reference_search_in(attack, *setting, dtype)
        assert gamma == ref_gamma, (seed, gamma, ref_gamma)
        assert torch.equal(out, ref_out), seed


@pytest.mark.parametrize("name", ["minmax", "minsum"])
@pytest.mark.parametrize("knowledge", ["full", "partial"])
def test_poisoned_rows_are_identical_through_poison_updates(name, knowledge):
    # d above the block width, so the blocked products are summed over several blocks
    d = 3 * _QuadraticSearch.BLOCK + 17
    for seed in range(3):
        rows = random_rows(seed + 100, k=10, d=d)
        malicious = [6, 7, 8, 9]
        attack = make(name, knowledge=knowledge)
        out = attack.poison_updates(rows, ctx_for(10, malicious, knowledge))
        benign = rows[:6] if knowledge == "full" else rows[6:]
        ref_row, ref_gamma = reference_search_in(attack, *attack.setting(benign), rows.dtype)
        assert attack.last_gamma == ref_gamma
        assert torch.equal(out[6:], ref_row.to(rows.dtype).expand(4, d))
        assert torch.equal(out[:6], rows[:6])


def test_tailored_attacks_start_from_the_identical_agnostic_gamma():
    def mean_oracle(rows: torch.Tensor) -> Verdict:
        w = torch.full((rows.shape[0],), 1.0 / rows.shape[0], dtype=rows.dtype)
        return Verdict(aggregate=w @ rows, weights=w, flagged=None)

    rows = random_rows(7, k=12, d=300)
    for name in ("minmax_tailored", "minsum_tailored"):
        attack = make(name, perturbation="unit")
        attack.poison_updates(rows, ctx_for(12, [9, 10, 11], oracle=mean_oracle))
        _, ref_gamma = reference_search_in(attack, *attack.setting(rows[:9]), rows.dtype)
        assert attack.last_search.points[0][0] == ref_gamma


@pytest.mark.parametrize("name", ["minmax", "minsum"])
def test_non_finite_and_overflowing_inputs_take_the_direct_path(name):
    rows = random_rows(5, k=8, d=40)
    rows[2, 3] = float("inf")
    attack = make(name)
    setting = attack.setting(rows)
    assert not _QuadraticSearch(attack, *setting, torch.float32).enabled
    assert attack.search_in(*setting, torch.float32)[1] == \
        reference_search_in(attack, *setting, torch.float32)[1]
    # float16 candidates overflow once γ·p passes 65504: those steps are decided directly
    rows = random_rows(6, k=8, d=40) * 100
    attack = make(name, perturbation="sign", gamma_init=1e4)
    setting = attack.setting(rows)
    quad = _QuadraticSearch(attack, *setting, torch.float16)
    assert quad.enabled and quad.decide(1e6) is None
    out, gamma = attack.search_in(*setting, torch.float16)
    ref_out, ref_gamma = reference_search_in(attack, *setting, torch.float16)
    assert gamma == ref_gamma and torch.equal(out, ref_out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_search_is_identical_on_tiny_updates_that_round_to_subnormals(dtype):
    # float16 rounds below 6.1e-5 with an absolute error (subnormals): the band covers it
    for seed in range(12):
        rows = random_rows(seed, k=9, d=64) * (1e-5 if dtype == torch.float16 else 1e-36)
        for name in ("minmax", "minsum"):
            attack = make(name, perturbation=("unit", "sign", "std")[seed % 3])
            setting = attack.setting(rows.to(dtype))
            out, gamma = attack.search_in(*setting, dtype)
            ref_out, ref_gamma = reference_search_in(attack, *setting, dtype)
            assert gamma == ref_gamma and torch.equal(out, ref_out), (seed, name)


def test_quadratic_scalars_by_hand():
    # b = [[0, 0], [2, 0]], μ = [1, 0], p = [0, 1]: ‖b_i − μ − γp‖² = 1 + γ²
    b = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    mean, p = b.mean(dim=0), torch.tensor([0.0, 1.0], dtype=torch.float64)
    quad = _QuadraticSearch(make("minmax"), b, mean, p, torch.float64)
    assert quad.a.tolist() == [1.0, 1.0] and quad.q.tolist() == [0.0, 0.0] and quad.pp == 1.0
    # threshold: max pairwise squared distance 4, so γ² ≤ 3
    assert quad.decide(1.7) is True and quad.decide(1.75) is False
    gamma = make("minmax", grow=False, gamma_init=2.0).search_in(b, mean, p, torch.float64)[1]
    assert 3 ** 0.5 * (1 - 1e-4) <= gamma <= 3 ** 0.5


def test_alie_row_is_bitwise_the_formula_on_torch_std_inputs():
    # μ + (sign·z)·σ computed in place must round exactly as the expression did
    rows = random_rows(11, k=20, d=500)
    for direction, sign in (("minus", -1.0), ("plus", 1.0)):
        attack = make("alie", direction=direction)
        out = attack.poison_updates(rows, ctx_for(20, [0, 1, 2, 3]))
        honest = rows[4:]
        std = honest - honest.mean(dim=0)
        std = (std.square().sum(dim=0) / 15).sqrt()
        assert torch.equal(out[0], honest.mean(dim=0) + sign * attack.last_z * std)
        assert torch.allclose(out[0], honest.mean(dim=0) + sign * attack.last_z
                              * honest.std(dim=0), rtol=0, atol=1e-5 * float(std.max()))
