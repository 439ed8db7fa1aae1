"""The defense protocol end to end: the template, verdict validation in the engine, the
oracle, diagnostics in the database, and layers that group rows."""

from __future__ import annotations

import json
import sqlite3
import sys
import types
from typing import ClassVar

import pytest
import torch
from helpers import TINY_BASE, write_grid
from test_readme import code_block_after

import byzbench.api as bb
from byzbench.attacks.base import Attack, AttackContext
from byzbench.config import grid_from_dict
from byzbench.defenses.base import Defense, DefenseSetup, RoundContext, Verdict, VerdictError
from byzbench.engine.simulation import run_cell
from byzbench.registry import DEFENSES
from byzbench.testing import check_defense


def ctx_for(n: int, d: int, f: int = 1, ids=None) -> RoundContext:
    return RoundContext(round=0, client_ids=torch.arange(n) if ids is None else ids,
                        num_samples=torch.ones(n), f=f,
                        generator=torch.Generator().manual_seed(0),
                        global_params=torch.zeros(d))


# ------------------------------------------------------------------ plugins in the engine

class ShortFlags(Defense):
    """A broken plugin: its flags have one entry too few (the mean otherwise)."""

    paper: ClassVar[str] = "none (a test fixture)"

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        n = updates.shape[0]
        w = torch.full((n,), 1.0 / n)
        return Verdict(aggregate=w @ updates, weights=w,
                       flagged=torch.zeros(n - 1, dtype=torch.bool))


class OracleProbe(Attack):
    """Sign flip that first queries the defense oracle many times (a search's cost)."""

    paper: ClassVar[str] = "none (a test fixture)"
    aware: ClassVar[bool] = True
    calls: ClassVar[list[int]] = []

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        assert ctx.oracle is not None
        for scale in (1.0, 5.0, 50.0):
            probe = torch.where(ctx.malicious[:, None], -scale * updates, updates)
            verdict = ctx.oracle(probe)
            assert verdict.aggregate.shape == (updates.shape[1],)
            OracleProbe.calls.append(int(verdict.weights.numel()))
        return -updates


@pytest.fixture
def fixtures_module(monkeypatch):
    module = types.ModuleType("protocol_fixtures")
    module.ShortFlags, module.OracleProbe = ShortFlags, OracleProbe
    monkeypatch.setitem(sys.modules, "protocol_fixtures", module)
    return module


def test_a_verdict_of_the_wrong_length_fails_its_cell_and_stores_no_number(
        fixtures_module, tmp_path):
    grid = write_grid(tmp_path / "g.yaml", {
        "name": "bad", "base": {**TINY_BASE, "malicious_fraction": 0.2},
        "grid": {"attack": ["none"], "defense": ["protocol_fixtures:ShortFlags", "median"]}})
    summary = bb.run(grid, tmp_path / "res", workers=1)
    assert len(summary.failed) == 1 and summary.done == 1
    assert "flagged has shape (5,), expected (6,)" in summary.failed[0][1]
    results = bb.load_results(tmp_path / "res")
    bad = results.cells[results.cells["defense"] == "protocol_fixtures:ShortFlags"].iloc[0]
    assert bad["status"] == "failed"
    assert "protocol_fixtures:ShortFlags" in bad["error"] and "flagged" in bad["error"]
    assert "\n" not in bad["error"].strip()
    assert bad["accuracy"] is None or bad["accuracy"] != bad["accuracy"]  # NULL, not 0.0
    assert not (results.rounds["cell_id"] == bad["cell_id"]).any()


def test_the_oracle_has_no_side_effects_on_stateful_defenses(fixtures_module):
    for defense in ("reputation", "foolsgold", "centered_clipping", "signguard"):
        cells = grid_from_dict({
            "name": "o", "base": {**TINY_BASE, "clients": 10, "malicious_fraction": 0.2,
                                  "rounds": 4},
            "grid": {"attack": ["protocol_fixtures:OracleProbe",
                                {"name": "sign_flip"}],
                     "defense": [defense]}}).cells
        OracleProbe.calls.clear()
        probed, plain = (run_cell(cell.config) for cell in cells)
        assert probed.status == "done", probed.error
        assert OracleProbe.calls and set(OracleProbe.calls) == {10}
        for a, b in zip(probed.rounds, plain.rounds):
            assert a["accuracy"] == b["accuracy"] and a["tp"] == b["tp"], defense


def test_diagnostics_are_stored_per_round(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", {
        "name": "diag", "base": {**TINY_BASE, "malicious_fraction": 0.2},
        "grid": {"attack": ["sign_flip"], "defense": ["krum", "ecdsa+multikrum"]}})
    assert bb.run(grid, tmp_path / "res", workers=1).ok
    rounds = bb.load_results(tmp_path / "res").rounds
    krum = rounds[rounds["defense"] == "krum"]
    scores = json.loads(krum["diagnostics"].iloc[0])["scores"]
    assert len(scores) == 6 and all(s >= 0 for s in scores)
    piped = json.loads(rounds[rounds["defense"] == "ecdsa+multikrum"]["diagnostics"].iloc[0])
    assert piped["0.ecdsa.rejection"] == [None] * 6
    assert len(piped["1.multikrum.scores"]) == 6


def test_an_older_database_gains_the_new_column_on_resume(tmp_path, tiny_grid):
    assert bb.run(tiny_grid, tmp_path / "res", workers=1).ok
    db = tmp_path / "res" / "results.db"
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE rounds DROP COLUMN diagnostics")
        conn.execute("DELETE FROM cells WHERE rowid = (SELECT MAX(rowid) FROM cells)")
    summary = bb.run(tiny_grid, tmp_path / "res", workers=1)
    assert summary.ok and summary.done == 1 and summary.reused == 3
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 4


# ------------------------------------------------------------------ the README example

@pytest.fixture
def norm_filter(monkeypatch):
    module = types.ModuleType("readme_defense")
    exec(compile(code_block_after("Write your own defense"), "README.md", "exec"),
         module.__dict__)
    monkeypatch.setitem(sys.modules, "readme_defense", module)
    return module.NormFilter


def test_readme_defense_copied_verbatim_survives_nonfinite_and_huge_rows(norm_filter,
                                                                          tmp_path):
    grid = write_grid(tmp_path / "g.yaml", {
        "name": "nf", "base": {**TINY_BASE, "malicious_fraction": 0.34},
        "grid": {"attack": [{"name": "nonfinite", "mode": m} for m in ("nan", "inf", "mixed")],
                 "defense": ["readme_defense:NormFilter", "fedavg"]}})
    assert bb.run(grid, tmp_path / "res", workers=1).ok
    cells = bb.load_results(tmp_path / "res").cells
    mine = cells[cells["defense"] == "readme_defense:NormFilter"]
    assert len(mine) == 3 and not mine["diverged"].any()
    assert (mine["accuracy"] > 0.2).all()  # 3 short rounds; chance is 0.1
    assert (mine["detection_rate"] == 1.0).all() and (mine["fpr"] == 0.0).all()
    assert cells[cells["defense"] == "fedavg"]["diverged"].all()  # the undefended baseline
    defense = norm_filter()
    for value in (1e38, -1e38, 3e38):
        x = torch.ones(6, 5)
        x[2] = value
        x[4] = float("nan")
        v = defense(x, ctx_for(6, 5, f=2))
        assert torch.equal(v.aggregate, torch.ones(5)), value
        assert v.flagged.tolist() == [False, False, True, False, True, False]
    check_defense(norm_filter)


# ------------------------------------------------------------------ the template

def test_template_counts_nonfinite_rows_against_f_and_scatters_back():
    seen = {}

    class Spy(Defense):
        """Records what the rule is handed; averages it with per-row diagnostics."""

        def aggregate(self, updates, ctx):
            seen.update(n=updates.shape[0], f=ctx.f, ids=ctx.client_ids.tolist(),
                        dropped=ctx.dropped, w=ctx.weights.sum().item())
            m = updates.shape[0]
            return Verdict(aggregate=updates.mean(0), weights=torch.full((m,), 1.0 / m),
                           flagged=None,
                           diagnostics={"row": torch.arange(m, dtype=torch.float64),
                                        "label": ["a"] * m, "scalar": 2.5})

    x = torch.ones(5, 3)
    x[1, 0] = float("nan")
    x[3, 2] = -float("inf")
    v = Spy()(x, ctx_for(5, 3, f=3))
    assert seen == {"n": 3, "f": 1, "ids": [0, 2, 4], "dropped": 2, "w": pytest.approx(1.0)}
    assert v.flagged.tolist() == [False, True, False, True, False]
    assert v.weights.tolist() == pytest.approx([1 / 3, 0, 1 / 3, 0, 1 / 3])
    row = v.diagnostics["row"].tolist()
    assert row[0] == 0 and row[2] == 1 and row[4] == 2 and row[1] != row[1]  # NaN
    assert v.diagnostics["label"] == ["a", None, "a", None, "a"]
    assert v.diagnostics["scalar"] == 2.5
    # every row non-finite: nothing reaches the rule
    seen.clear()
    v = Spy()(torch.full((3, 2), float("nan")), ctx_for(3, 2))
    assert not seen and v.flagged.all() and not v.aggregate.any()


def test_the_engine_check_names_the_field():
    class WrongAggregate(Defense):
        """Returns an aggregate of the wrong length."""

        def aggregate(self, updates, ctx):
            n = updates.shape[0]
            return Verdict(aggregate=torch.zeros(2), weights=torch.full((n,), 1.0 / n),
                           flagged=None)

    with pytest.raises(VerdictError, match=r"aggregate has shape \(2,\), expected \(4,\)"):
        WrongAggregate()(torch.ones(3, 4), ctx_for(3, 4))

    class NegativeWeights(WrongAggregate):
        def aggregate(self, updates, ctx):
            n = updates.shape[0]
            return Verdict(aggregate=updates.mean(0), weights=-torch.ones(n), flagged=None)

    with pytest.raises(VerdictError, match="weights holds negative"):
        NegativeWeights()(torch.ones(3, 4), ctx_for(3, 4))


# ------------------------------------------------------------------ layers that group rows

class Pairs(Defense):
    """Groups rows (0,1), (2,3), …: passes each pair's mean on (a bucketing-like layer)."""

    paper: ClassVar[str] = "none (a test fixture)"
    mixes_rows: ClassVar[bool] = True
    stateless: ClassVar[bool] = True

    def aggregate(self, updates, ctx):
        n = updates.shape[0]
        m = (n + 1) // 2
        mixing = torch.zeros(m, n, dtype=torch.float64)
        mixing[torch.arange(n) // 2, torch.arange(n)] = 1.0
        mixing = mixing / mixing.sum(dim=1, keepdim=True)
        passed = mixing.to(updates.dtype) @ updates
        w = torch.full((n,), 1.0 / n, dtype=updates.dtype)
        return Verdict(aggregate=w @ updates, weights=w, flagged=None, passed=passed,
                       mixing=mixing)


class Outlier(Defense):
    """Flags the one row farthest from the median and averages the rest."""

    paper: ClassVar[str] = "none (a test fixture)"
    stateless: ClassVar[bool] = True

    def aggregate(self, updates, ctx):
        dist = (updates - updates.median(dim=0).values).norm(dim=1)
        flagged = dist == dist.max()
        w = (~flagged).to(updates.dtype) / int((~flagged).sum())
        return Verdict(aggregate=w @ updates, weights=w, flagged=flagged,
                       diagnostics={"dist": dist, "max": float(dist.max())})


def test_a_grouping_layer_maps_flags_and_weights_back_to_clients(monkeypatch):
    DEFENSES.register("test_pairs")(Pairs)
    DEFENSES.register("test_outlier")(Outlier)
    try:
        pipe = DEFENSES.get("pipeline")(DEFENSES.get("pipeline").Params(
            layers=["test_pairs", "test_outlier"]))
        x = torch.tensor([[1.0], [1.0], [1.2], [0.8], [9.0], [1.0]])  # pairs: 1, 1, 5
        pipe.setup(DefenseSetup(num_clients=6, clients_per_round=6, f=1, dim=1, seed=0,
                                device=torch.device("cpu")))
        v = pipe(x, ctx_for(6, 1))
        # the third pair (clients 4 and 5) is flagged: both its clients are flagged
        assert v.flagged.tolist() == [False, False, False, False, True, True]
        assert torch.allclose(v.aggregate, torch.tensor([1.0]))
        assert v.weights.tolist() == pytest.approx([0.25] * 4 + [0.0, 0.0])
        assert v.diagnostics["1.test_outlier.max"] == pytest.approx(4.0)
        assert "1.test_outlier.dist" not in v.diagnostics  # per group: no client to go to
        with pytest.raises(ValueError, match=r"layer 1 \(ecdsa\) verifies signatures.*"
                                             r"layer 0 \(test_pairs\)"):
            DEFENSES.get("pipeline").Params(layers=["test_pairs", "ecdsa"])
        with pytest.raises(ValueError, match="keeps state per client id"):
            DEFENSES.get("pipeline").Params(layers=["test_pairs", "reputation"])
        check_defense(DEFENSES.get("pipeline"), {"layers": ["test_pairs", "median"]},
                      permutation=False)  # pairs are formed by position
    finally:
        DEFENSES._entries.pop("test_pairs")
        DEFENSES._entries.pop("test_outlier")
