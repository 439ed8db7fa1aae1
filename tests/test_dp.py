"""DP-FedAvg (byzbench.privacy.dp): the accountant against dp-accounting's own composition,
calibration, clipping, the noise's scale, and the mechanism inside a real cell."""

from __future__ import annotations

import math

import dp_accounting
import pytest
import torch
from dp_accounting import rdp
from helpers import TINY_BASE

from byzbench.config import CellConfig, DPConfig
from byzbench.engine.simulation import Simulation, run_cell
from byzbench.privacy.dp import (
    RDP_ORDERS,
    DPMechanism,
    calibrate_sigma,
    clip_rows,
    epsilons,
)

DELTA = 1e-5


def _dp_accounting_epsilon(event: dp_accounting.DpEvent, steps: int) -> float:
    accountant = rdp.RdpAccountant(orders=list(RDP_ORDERS))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return accountant.get_epsilon(DELTA)


@pytest.mark.parametrize(("sigma", "q", "steps"), [(1.1, 0.25, 10), (0.8, 1.0, 5),
                                                    (2.0, 0.05, 40)])
def test_central_epsilon_equals_dp_accountings_subsampled_gaussian(sigma, q, steps):
    got = epsilons("central", sigma, q, steps, DELTA)
    gaussian = dp_accounting.GaussianDpEvent(sigma)
    event = gaussian if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, gaussian)
    assert len(got) == steps
    # cumulative per round: after k rounds, the k-fold composition
    for k in (1, steps // 2, steps):
        assert got[k - 1] == pytest.approx(_dp_accounting_epsilon(event, k), rel=1e-9)
    assert all(a < b for a, b in zip(got, got[1:]))  # ε only grows


def test_local_epsilon_is_a_gaussian_of_sensitivity_2c_without_amplification():
    got = epsilons("local", 3.0, 0.25, 12, DELTA)
    # replace-one: sensitivity 2C, so noise multiplier σ/2; every round composes (q ignored)
    want = _dp_accounting_epsilon(dp_accounting.GaussianDpEvent(1.5), 12)
    assert got[-1] == pytest.approx(want, rel=1e-9)
    assert got[-1] > epsilons("central", 3.0, 1.0, 12, DELTA)[-1]


def test_plain_gaussian_epsilon_within_the_classical_rdp_bound():
    # RDP of the Gaussian mechanism (Mironov 2017, Prop. 7): T·α/(2σ²); conversion
    # ε ≤ min_α RDP(α) + log(1/δ)/(α − 1). dp-accounting's conversion is tighter, not looser.
    sigma, steps = 4.0, 20
    classic = min(steps * a / (2 * sigma**2) + math.log(1 / DELTA) / (a - 1)
                  for a in RDP_ORDERS)
    got = epsilons("central", sigma, 1.0, steps, DELTA)[-1]
    assert 0.8 * classic < got <= classic


@pytest.mark.parametrize(("mode", "target", "q", "rounds"), [
    ("central", 8.0, 1.0, 30), ("central", 1.0, 0.2, 30), ("local", 8.0, 0.5, 10)])
def test_target_epsilon_gives_a_sigma_within_tolerance(mode, target, q, rounds):
    sigma = calibrate_sigma(mode, target, DELTA, q, rounds)
    spent = epsilons(mode, sigma, q, rounds, DELTA)[-1]
    assert spent <= target * (1 + 1e-3)
    assert spent == pytest.approx(target, rel=1e-2)
    # bracket: 1% less noise overspends, 1% more underspends
    assert epsilons(mode, sigma * 0.99, q, rounds, DELTA)[-1] > target
    assert epsilons(mode, sigma * 1.01, q, rounds, DELTA)[-1] < target


def test_mechanism_from_config_uses_the_given_sigma_or_calibrates():
    given = DPMechanism.from_config(DPConfig(mode="central", sigma=1.3, clip=0.5), 20, 5, 7)
    assert given is not None and given.sigma == 1.3 and given.clip == 0.5
    assert given.epsilons == epsilons("central", 1.3, 0.25, 7, DELTA)
    target = DPMechanism.from_config(DPConfig(mode="local", epsilon=4.0), 20, 5, 7)
    assert target is not None and target.epsilon == pytest.approx(4.0, rel=1e-2)
    assert DPMechanism.from_config(DPConfig(), 20, 5, 7) is None


def test_clipping_bounds_norms_and_leaves_rows_inside_untouched():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(50, 300, generator=g) * torch.linspace(0.001, 0.2, 50)[:, None]
    clipped = clip_rows(rows, 1.0)
    norms = torch.linalg.vector_norm(rows, dim=1)
    inside = norms <= 1.0
    assert inside.any() and (~inside).any()
    assert torch.equal(clipped[inside], rows[inside])             # bit for bit
    assert torch.allclose(torch.linalg.vector_norm(clipped[~inside], dim=1),
                          torch.ones(int((~inside).sum())), rtol=1e-6)
    # direction kept: each clipped row is a positive multiple of the original
    cos = torch.nn.functional.cosine_similarity(clipped, rows, dim=1)
    assert torch.allclose(cos, torch.ones(50), atol=1e-6)
    # a mask restricts clipping to its rows
    mask = torch.zeros(50, dtype=torch.bool)
    mask[-1] = True
    only_last = clip_rows(rows, 1.0, mask)
    assert torch.equal(only_last[:-1], rows[:-1])
    assert torch.linalg.vector_norm(only_last[-1]) == pytest.approx(1.0, rel=1e-6)


def test_central_noise_std_is_sigma_c_over_m():
    mech = DPMechanism(mode="central", clip=0.5, sigma=2.0, delta=DELTA, epsilons=(1.0,))
    d, m = 400_000, 10
    aggregate = torch.full((d,), 0.25)
    noised = mech.server_side(aggregate, m, torch.Generator().manual_seed(3))
    noise = noised - aggregate
    # sample std of 4·10⁵ normals: relative standard error ≈ 1/√(2d) ≈ 0.0011
    assert noise.std().item() == pytest.approx(2.0 * 0.5 / m, rel=0.01)
    assert abs(noise.mean().item()) < 5 * 0.1 / math.sqrt(d)
    # local mode leaves the aggregate alone
    local = DPMechanism(mode="local", clip=0.5, sigma=2.0, delta=DELTA, epsilons=(1.0,))
    assert torch.equal(local.server_side(aggregate, m, torch.Generator()), aggregate)


def test_local_noise_on_honest_rows_only_and_central_clips_every_row():
    g = torch.Generator().manual_seed(1)
    updates = torch.randn(8, 50_000, generator=g) * 0.01   # norms ≈ 2.2 > C = 1
    honest = torch.tensor([True, True, False, True, True, False, True, True])
    local = DPMechanism(mode="local", clip=1.0, sigma=3.0, delta=DELTA, epsilons=(1.0,))
    out = local.client_side(updates, honest, torch.Generator().manual_seed(2))
    assert torch.equal(out[~honest], updates[~honest])      # the attack's rows as written
    residual = out[honest] - clip_rows(updates[honest], 1.0)
    assert residual.std().item() == pytest.approx(3.0, rel=0.01)
    central = DPMechanism(mode="central", clip=1.0, sigma=3.0, delta=DELTA, epsilons=(1.0,))
    clipped = central.client_side(updates, honest, torch.Generator().manual_seed(2))
    assert torch.allclose(torch.linalg.vector_norm(clipped, dim=1), torch.ones(8), rtol=1e-5)


def _config(**privacy_dp) -> CellConfig:
    base = {**TINY_BASE, "rounds": 2, "clients": 8, "malicious_fraction": 0.25,
            "attack": {"name": "scaling", "factor": 1000.0}}
    if privacy_dp:
        base["privacy"] = {"dp": privacy_dp}
    from byzbench.config import grid_from_dict
    return grid_from_dict({"name": "t", "base": base, "grid": {}}).cells[0].config


def _first_step(config: CellConfig) -> float:
    sim = Simulation(config, torch.device("cpu"))
    before = sim.theta.clone()
    sim.run_round(0)
    return torch.linalg.vector_norm(sim.theta - before).item()


def test_central_dp_bounds_a_scaling_attack_under_fedavg():
    plain = _first_step(_config())
    # C = 0.05 and almost no noise: every row clipped, so the mean moves by at most C
    central = _first_step(_config(mode="central", clip=0.05, sigma=1e-6))
    assert plain > 10 * 0.05
    assert central <= 0.05 * (1 + 1e-4)
    # local DP: the attacker's rows skip clipping, so the attack still gets through
    local = _first_step(_config(mode="local", clip=0.05, sigma=1e-6))
    assert local > 10 * 0.05


def test_dp_cell_reproduces_bit_for_bit_and_records_epsilon():
    config = _config(mode="local", epsilon=8.0)
    a, b = run_cell(config), run_cell(config)
    assert a.status == b.status == "done"
    strip = [{k: v for k, v in r.items() if not k.endswith("_ms")} for r in a.rounds]
    assert strip == [{k: v for k, v in r.items() if not k.endswith("_ms")} for r in b.rounds]
    mech = DPMechanism.from_config(config.privacy.dp, 8, 8, 2)
    assert [r["epsilon"] for r in a.rounds] == list(mech.epsilons)
    assert a.summary["epsilon"] == pytest.approx(8.0, rel=1e-2)
    assert a.summary["dp_mode"] == "local" and a.summary["delta"] == DELTA
    assert a.summary["sigma"] == mech.sigma
    # the noise is the cell's: another seed draws other noise
    other = run_cell(config.model_copy(update={"seed": 1}))
    assert [r["loss"] for r in other.rounds] != [r["loss"] for r in a.rounds]


def test_cells_without_dp_record_no_epsilon():
    result = run_cell(_config())
    assert "epsilon" not in result.rounds[0] and "epsilon" not in result.summary


def test_central_dp_under_secure_aggregation_adds_its_noise_to_the_secure_sum():
    base = {**TINY_BASE, "rounds": 2, "clients": 8}
    from byzbench.config import grid_from_dict

    def config(privacy):
        return grid_from_dict({"name": "t", "base": {**base, "privacy": privacy},
                               "grid": {}}).cells[0].config

    secure = run_cell(config({"secure_aggregation": "secagg+"}))
    both = run_cell(config({"secure_aggregation": "secagg+",
                            "dp": {"mode": "central", "epsilon": 8.0, "clip": 0.3}}))
    assert secure.status == both.status == "done"
    assert both.summary["secure_aggregation"] == "secagg+"
    assert both.summary["epsilon"] == pytest.approx(8.0, rel=1e-2)
    assert all(r["secagg_ms"] > 0 for r in both.rounds)
    assert [r["loss"] for r in both.rounds] != [r["loss"] for r in secure.rounds]
