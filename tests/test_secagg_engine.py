"""Secure aggregation in the engine: the defense sees only sums, the cell stays
reproducible, malicious clients may deviate in what they submit, signatures cover the
masked messages, and a defense that needs plaintext updates is skipped end to end."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import ClassVar

import torch
from helpers import TINY_BASE, write_grid
from typer.testing import CliRunner

from byzbench.attacks.base import Attack, AttackContext
from byzbench.cli import app
from byzbench.config import CellConfig
from byzbench.defenses.base import RoundContext, Verdict
from byzbench.defenses.fedavg import FedAvg
from byzbench.engine.simulation import Simulation, run_cell

runner = CliRunner()
BASE = {**TINY_BASE, "dataset": {"name": "digits"},
        "model": {"name": "mlp", "params": {"hidden": [16]}},
        "clients": 10, "rounds": 2, "device": "cpu"}
TIMES = ("agg_ms", "sign_ms", "verify_ms", "secagg_ms")


class Recorder(FedAvg):
    """FedAvg that records what reaches it: the update matrix (plaintext hook) or the
    results of its secure sums (its protocol is FedAvg's, written out)."""

    log: ClassVar[list[tuple[str, torch.Tensor]]] = []

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        verdict = super().aggregate(updates.clamp(-1, 1), ctx)
        Recorder.log.append(("plaintext", verdict.aggregate.clone()))
        return verdict

    def secure_aggregate(self, channel, ctx: RoundContext) -> Verdict:
        assert not any(isinstance(v, torch.Tensor) and v.dim() == 2
                       for v in vars(ctx).values()), "an [n, d] matrix in the context"
        w = self.client_weights(ctx, ctx.num_samples.device, torch.float64)
        total = channel.secure_sum(lambda x: w.unsqueeze(1) * x.double(), channel.range)
        Recorder.log.append(("sum", total.clone()))
        return Verdict(aggregate=total, weights=w, flagged=None)


class Deviant(Attack):
    """Malicious clients train honestly but submit the sum's bound on every coordinate."""

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return updates

    def secure_quantities(self, step, quantities, ctx):
        return torch.full_like(quantities, 1e9)  # clipped by the ring to the bound (1.0)


def _cell(defense: str, secure: str = "secagg+", attack: str = "none",
          fraction: float = 0.0) -> CellConfig:
    spec = ({"name": defense} if "+" not in defense else
            {"name": "pipeline", "params": {"layers": defense.split("+")}})
    return CellConfig(**BASE, defense=spec, attack={"name": attack},
                      malicious_fraction=fraction,
                      privacy={"secure_aggregation": secure})


def test_the_defense_receives_only_sums_equal_to_the_plaintext_aggregate():
    Recorder.log.clear()
    Simulation(_cell("test_secagg_engine:Recorder", "none")).run()
    plain = [v for kind, v in Recorder.log]
    assert [kind for kind, _ in Recorder.log] == ["plaintext"] * 2
    Recorder.log.clear()
    sim = Simulation(_cell("test_secagg_engine:Recorder", "secagg+"))
    first = sim.run_round(0)
    kinds = [kind for kind, _ in Recorder.log]
    assert kinds == ["sum"]  # the plaintext hook never ran
    total = Recorder.log[0][1]
    assert total.shape == (sim.model.dim,)
    # the same round-0 updates (same seed) aggregated in the clear, up to float32 rounding
    assert (total - plain[0].double()).abs().max().item() < 1e-6
    assert first["secagg_ms"] > 0


def test_a_secagg_cell_is_reproducible_though_keys_are_fresh():
    a, b = run_cell(_cell("geomed")), run_cell(_cell("geomed"))
    strip = [{k: v for k, v in r.items() if k not in TIMES} for r in a.rounds]
    assert strip == [{k: v for k, v in r.items() if k not in TIMES} for r in b.rounds]
    assert a.summary["secure_aggregation"] == "secagg+" and a.summary["secagg_ms"] > 0
    # detection is n/a: the server sees no client
    assert a.summary["detection_rate"] is None
    plain = run_cell(_cell("fedavg", "none"))
    assert plain.summary["secure_aggregation"] == "none" and plain.summary["secagg_ms"] is None


def test_malicious_clients_may_deviate_in_what_they_submit():
    Recorder.log.clear()
    Simulation(_cell("test_secagg_engine:Recorder", "secagg")).run_round(0)
    honest = Recorder.log[0][1]
    Recorder.log.clear()
    sim = Simulation(_cell("test_secagg_engine:Recorder", "secagg",
                           "test_secagg_engine:Deviant", 0.2))
    sim.run_round(0)
    shift = Recorder.log[0][1] - honest
    # two malicious of ten, weights ≈ 0.1: each replaced w_i·x_i (|·| < 0.1) by the bound 1
    assert sim.malicious.sum() == 2
    assert shift.min().item() > 1.7 and shift.max().item() < 2.3


def test_signatures_cover_the_masked_messages():
    result = run_cell(_cell("ecdsa+fedavg", "secagg", "sign_flip", 0.2))
    assert result.status == "done"
    for row in result.rounds:
        assert row["sign_ms"] > 0 and row["verify_ms"] > 0 and row["secagg_ms"] > 0
        assert row["fp"] == 0 and row["tp"] == 0  # every masked message verified
    # transport attacks alter plaintext in transit: not modelled on masked messages
    skipped = run_cell(_cell("ecdsa+fedavg", "secagg", "tamper", 0.2))
    assert skipped.status == "skipped"
    assert skipped.error.startswith("secure aggregation: transport attacks")


def test_plaintext_defenses_are_skipped_end_to_end(tmp_path: Path):
    grid = write_grid(tmp_path / "g.yaml", {
        "name": "sa", "base": {**TINY_BASE, "clients": 8},
        "grid": {"defense": ["fedavg", "krum", "centered_clipping"],
                 "privacy.secure_aggregation": ["secagg+"]}})
    out = tmp_path / "res"
    result = runner.invoke(app, ["run", str(grid), "-o", str(out), "-w", "1", "-q"])
    assert result.exit_code == 0, result.output
    with sqlite3.connect(out / "results.db") as conn:
        rows = dict(conn.execute("SELECT defense, status || ': ' || coalesce(error, '') "
                                 "FROM cells").fetchall())
        secagg_ms = conn.execute("SELECT count(*) FROM rounds WHERE secagg_ms > 0").fetchone()
    assert rows["fedavg"] == rows["centered_clipping"] == "done: "
    assert rows["krum"].startswith("skipped: secure aggregation: krum needs each client's "
                                   "plaintext update")
    assert secagg_ms[0] == 2 * TINY_BASE["rounds"]
    dry = runner.invoke(app, ["run", str(grid), "--dry-run"], env={"COLUMNS": "400"})
    assert dry.exit_code == 0 and "skipped (why)" in dry.output
    assert "secure aggregation: krum needs" in dry.output
    strict = runner.invoke(app, ["run", str(grid), "-o", str(tmp_path / "s"), "--strict"])
    assert strict.exit_code == 2 and "secure aggregation: krum" in strict.output
    report = runner.invoke(app, ["report", str(out)])
    assert report.exit_code == 0 and "secure aggregation: krum" in report.output


def test_bits_too_small_is_one_line_from_the_cli(tmp_path: Path):
    grid = write_grid(tmp_path / "g.yaml", {
        "name": "bits", "base": {**TINY_BASE, "privacy": {
            "secure_aggregation": "secagg", "secagg": {"bits": 8, "range": 100}}},
        "grid": {"defense": ["fedavg"]}})
    result = runner.invoke(app, ["run", str(grid), "--dry-run"])
    assert result.exit_code == 2
    assert "privacy.secagg.bits 8 is too small" in result.output
    assert "Traceback" not in result.output


def test_secagg_inflate_scales_what_malicious_clients_submit():
    def first_sum(attack: dict, fraction: float = 0.2) -> torch.Tensor:
        Recorder.log.clear()
        cfg = _cell("test_secagg_engine:Recorder", "secagg")
        cfg = cfg.model_copy(update={"attack": cfg.attack.model_copy(update=attack),
                                     "malicious_fraction": fraction})
        Simulation(cfg).run_round(0)
        return Recorder.log[0][1]

    honest = first_sum({"name": "none"})        # H + Σ_mal w_i x_i
    flip = first_sum({"name": "secagg_inflate", "params": {"inflate": 1.0}})  # H − M
    five = first_sum({"name": "secagg_inflate", "params": {"inflate": 5.0}})  # H − 5M
    # with M = Σ_mal w_i x_i: H = (honest + flip)/2, M = (honest − flip)/2, so
    # H − 5M = 3·flip − 2·honest (exact but for rounding at 2^-57)
    assert (five - (3 * flip - 2 * honest)).abs().max().item() < 1e-12
    assert (five - flip).abs().max().item() > 1e-4
