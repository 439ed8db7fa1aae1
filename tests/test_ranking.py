"""'Which defense?': defenses ranked by worst-case accuracy with a bootstrap interval over
seeds (byzbench.worstcase, byzbench.report.ranking), and the check gate on it.

Most tests read a synthetic results directory: a grid's cells recorded with hand-chosen
final metrics (no training), so every expected number below is computed by hand. One test
runs a tiny grid end to end through the CLI (run, report, baseline, check).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY_BASE
from typer.testing import CliRunner

import byzbench.api as bb
from byzbench.attacks.base import Attack, AttackContext
from byzbench.cli import app
from byzbench.config import grid_from_dict
from byzbench.engine.simulation import CellResult
from byzbench.regression import compare, make_baseline, parse_tolerances
from byzbench.report.build import build_report
from byzbench.report.data import load
from byzbench.report.ranking import NOT_AWARE_NOTE, ranking_frame, ranking_table
from byzbench.report.tables import comparative_frame
from byzbench.report.writers import render_html, render_markdown
from byzbench.store import ResultsStore
from byzbench.worstcase import attack_traits, rank_ranges, strict_ranks, worst_case

runner = CliRunner()
AWARE = "ranking_fixtures:AwareFlip"


class AwareFlip(Attack):
    """Sign flip × 4 that asks the defense oracle once first: a defense-aware attack."""

    paper: ClassVar[str] = "none (a test fixture)"
    aware: ClassVar[bool] = True

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        assert ctx.oracle is not None
        ctx.oracle(torch.where(ctx.malicious[:, None], -updates, updates))
        return torch.where(ctx.malicious[:, None], -4.0 * updates, updates)


@pytest.fixture
def fixtures_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("ranking_fixtures")
    module.AwareFlip = AwareFlip
    monkeypatch.setitem(sys.modules, "ranking_fixtures", module)
    return module


# (defense, attack) → final accuracy of seeds 0, 1, 2; a pair not listed is not recorded.
ACCURACY = {
    # fedavg: min over attacks of the seed means is gaussian's 0.75, although sign_flip
    # has the lowest single value (0.60) and the mean of per-seed minima is 0.6667.
    ("fedavg", "none"): [0.90, 0.90, 0.90],
    ("fedavg", "sign_flip"): [0.60, 0.90, 0.90],      # mean 0.80
    ("fedavg", "gaussian"): [0.85, 0.70, 0.70],       # mean 0.75  ← worst
    ("fedavg", AWARE): [0.95, 0.95, 0.95],            # the only aware attack: fedavg's
    # median: clearly below the others (interval [0.50, 0.54])
    ("median", "none"): [0.88, 0.88, 0.88],
    ("median", "sign_flip"): [0.50, 0.52, 0.54],      # mean 0.52  ← worst
    ("median", "gaussian"): [0.60, 0.60, 0.60],
    # trimmed_mean: its interval overlaps fedavg's
    ("trimmed_mean", "none"): [0.89, 0.89, 0.89],
    ("trimmed_mean", "sign_flip"): [0.71, 0.73, 0.75],  # mean 0.73  ← worst
    ("trimmed_mean", "gaussian"): [0.90, 0.90, 0.90],
    # geomed ran only without attack
    ("geomed", "none"): [0.91, 0.91, 0.91],
}
ASR = {("fedavg", "sign_flip"): [0.1, 0.1, 0.1], ("fedavg", "gaussian"): [0.2, 0.2, 0.2],
       ("median", "gaussian"): [0.3, 0.5, 0.4]}
AGG_MS = {"fedavg": 1.0, "median": 2.0, "trimmed_mean": 3.0, "geomed": 4.0}


@pytest.fixture
def synthetic(fixtures_module: types.ModuleType, tmp_path: Path) -> Path:
    grid = grid_from_dict({
        "name": "syn", "base": TINY_BASE,
        "grid": {"attack": ["none", "sign_flip", "gaussian", AWARE],
                 "defense": ["fedavg", "median", "trimmed_mean", "geomed"],
                 "malicious_fraction": [0.2], "seed": [0, 1, 2]}})
    return _write_synthetic(grid, tmp_path / "syn", grid.cells)


def _write_synthetic(grid, out: Path, cells) -> Path:
    """The synthetic results of ``grid``, its ``cells`` stored in the order given."""
    with ResultsStore.create(out) as store:
        store.register_grid(grid)
        for cell in cells:
            key = (cell.axes["defense"], cell.axes["attack"])
            if key not in ACCURACY:
                continue
            seed = int(cell.axes["seed"])
            summary = {"accuracy": ACCURACY[key][seed], "agg_ms": AGG_MS[key[0]],
                       "n": 6, "d": 1210}
            if key in ASR:
                summary["asr"] = ASR[key][seed]
            if key[0] == "trimmed_mean" and key[1] != "none":  # counts: FPR 1 / 10
                summary.update(tp=1, fp=1, fn=0, tn=9)
            store.record("syn", cell, CellResult(status="done", summary=summary))
    return out


def test_what_is_read_does_not_depend_on_the_order_cells_finished(synthetic: Path,
                                                                   tmp_path: Path):
    """Cells finish in an order that varies with the workers and the machine's load; the
    store reads them back in the grid's order, so the report (bootstrap intervals and float
    sums included) is the same whatever that order was."""
    with ResultsStore.open(synthetic) as store:
        in_order = store.cells_frame()
        grid_ids = json.loads(store.meta()["cells:syn"])
    shuffled = list(np.random.default_rng(3).permutation(len(grid_ids)))
    grid = grid_from_dict({
        "name": "syn", "base": TINY_BASE,
        "grid": {"attack": ["none", "sign_flip", "gaussian", AWARE],
                 "defense": ["fedavg", "median", "trimmed_mean", "geomed"],
                 "malicious_fraction": [0.2], "seed": [0, 1, 2]}})
    cells = [grid.cells[i] for i in shuffled]
    other = _write_synthetic(grid, tmp_path / "shuffled", cells)
    with ResultsStore.open(other) as store:
        stored = [r[0] for r in store.conn.execute("SELECT cell_id FROM cells ORDER BY rowid")]
        frame, rounds = store.cells_frame(), store.rounds_frame()
        rows = store.cell_rows()
    assert stored != list(in_order["cell_id"])          # stored in another order ...
    assert list(frame["cell_id"]) == list(in_order["cell_id"])  # ... read in the grid's
    assert list(frame["cell_id"]) == [c for c in grid_ids if c in set(frame["cell_id"])]
    assert [r["cell_id"] for r in rows] == list(frame["cell_id"])
    assert rounds.empty or list(dict.fromkeys(rounds["cell_id"])) == \
        [c for c in frame["cell_id"] if c in set(rounds["cell_id"])]
    pd.testing.assert_frame_equal(_frame(other), _frame(synthetic))


def _frame(results: Path, **filters: list[str]) -> pd.DataFrame:
    data = load(results, **filters)
    return ranking_frame(data, comparative_frame(data)).set_index("defense")


# -- the worst case -------------------------------------------------------------------------

def test_worst_case_is_the_min_over_attacks_of_the_seed_means(synthetic: Path):
    frame = _frame(synthetic)
    assert frame.loc["fedavg", "worst_accuracy"] == pytest.approx(0.75)
    assert frame.loc["fedavg", "worst_attack"] == "gaussian"
    assert frame.loc["median", "worst_accuracy"] == pytest.approx(0.52)
    assert frame.loc["median", "worst_attack"] == "sign_flip"
    assert frame.loc["trimmed_mean", "worst_accuracy"] == pytest.approx(0.73)
    assert (frame.loc["fedavg", "attacks"], frame.loc["fedavg", "seeds"]) == (3, 3)
    # the clean baseline is no attack: geomed ran only without one
    assert pd.isna(frame.loc["geomed", "worst_accuracy"])
    assert pd.isna(frame.loc["geomed", "worst_attack"])


def test_the_other_columns(synthetic: Path):
    frame = _frame(synthetic)
    assert frame.loc["fedavg", "clean_accuracy"] == pytest.approx(0.90)
    assert frame.loc["geomed", "clean_accuracy"] == pytest.approx(0.91)
    # worst ASR: the highest mean over attacks (fedavg 0.1 and 0.2 → 0.2)
    assert frame.loc["fedavg", "worst_asr"] == pytest.approx(0.2)
    assert frame.loc["median", "worst_asr"] == pytest.approx(0.4)
    assert pd.isna(frame.loc["trimmed_mean", "worst_asr"])
    # FPR micro-averaged over attacked cells: 6 × 1 / 6 × (1 + 9)
    assert frame.loc["trimmed_mean", "fpr"] == pytest.approx(0.1)
    assert not frame.loc["median", "decides_per_client"]
    assert frame.loc["median", "agg_ms"] == pytest.approx(2.0)
    assert frame.loc["fedavg", "plaintext_updates"] == "no"
    assert frame.loc["median", "plaintext_updates"] == "yes"


# -- the interval ---------------------------------------------------------------------------

def test_the_bootstrap_interval_is_deterministic_contains_the_point_and_is_per_row(
        synthetic: Path):
    first, again = _frame(synthetic), _frame(synthetic)
    ranked = first.dropna(subset=["worst_accuracy"])
    pd.testing.assert_series_equal(first["ci_low"], again["ci_low"])
    pd.testing.assert_series_equal(first["ci_high"], again["ci_high"])
    assert (ranked["ci_low"] <= ranked["worst_accuracy"]).all()
    assert (ranked["worst_accuracy"] <= ranked["ci_high"]).all()
    assert (ranked["ci_low"] < ranked["ci_high"]).all()  # seeds differ: a real interval
    # median's minimum is sign_flip's mean of 3 draws from {0.50, 0.52, 0.54}: each end
    # is drawn 1/27 of the time, more than the 2.5% each percentile cuts off
    assert (first.loc["median", "ci_low"], first.loc["median", "ci_high"]) == \
        pytest.approx((0.50, 0.54))
    # a row's interval does not depend on which other rows are reported
    alone = _frame(synthetic, defenses=["median"])
    assert alone.loc["median", "ci_low"] == first.loc["median", "ci_low"]
    assert alone.loc["median", "ci_high"] == first.loc["median", "ci_high"]


def test_one_seed_gives_the_point_as_interval_and_many_seeds_a_seeded_one():
    cells = pd.DataFrame({"defense": "d", "attack": ["a", "b", "none"], "seed": 0,
                          "accuracy": [0.7, 0.6, 0.9], "benign": [False, False, True]})
    one = worst_case(cells, ["defense"]).iloc[0]
    assert (one["worst_accuracy"], one["ci_low"], one["ci_high"]) == \
        pytest.approx((0.6, 0.6, 0.6))
    assert one["worst_attack"] == "b" and not one["adaptive_tested"]
    rng = np.random.default_rng(5)
    many = pd.DataFrame({"defense": "d", "attack": np.repeat(["a", "b"], 10),
                         "seed": np.tile(np.arange(10), 2),
                         "accuracy": rng.uniform(0.5, 0.9, 20), "benign": False})
    x, y = worst_case(many, ["defense"]), worst_case(many, ["defense"])
    pd.testing.assert_frame_equal(x, y)
    other = worst_case(many, ["defense"], seed=1)
    assert other["ci_low"].iloc[0] != x["ci_low"].iloc[0]
    assert worst_case(many, ["defense"], samples=0)["ci_low"].isna().all()


# -- ranks and ties -------------------------------------------------------------------------

def test_overlapping_intervals_tie_and_separated_ones_are_ordered(synthetic: Path):
    frame = _frame(synthetic)
    # fedavg's and trimmed_mean's intervals overlap: each could be first or second; median
    # lies entirely below both: third, alone; geomed has no worst case: unranked
    assert frame.loc["fedavg", "ci_low"] <= frame.loc["trimmed_mean", "ci_high"]
    assert frame.loc["trimmed_mean", "ci_low"] <= frame.loc["fedavg", "ci_high"]
    assert frame.loc["median", "ci_high"] < frame.loc["trimmed_mean", "ci_low"]
    assert frame["rank"].dropna().to_dict() == {"fedavg": 1, "trimmed_mean": 1, "median": 3}
    assert frame["rank_worst"].dropna().to_dict() == {"fedavg": 2, "trimmed_mean": 2,
                                                      "median": 3}
    assert pd.isna(frame.loc["geomed", "rank"])
    assert frame["tied"].to_dict() == {"fedavg": True, "trimmed_mean": True,
                                       "median": False, "geomed": False}
    # sorted by worst case (best first); the unranked last
    assert list(frame.index) == ["fedavg", "trimmed_mean", "median", "geomed"]
    shown = ranking_table(load(synthetic), comparative_frame(load(synthetic)))
    display = shown.sections[0].frame
    assert list(display["rank"]) == ["1–2", "1–2", "3", "–"]
    assert list(display["defense"]) == ["fedavg", "trimmed_mean", "median", "geomed"]
    worst = display.columns[2]
    assert worst.startswith("worst-case accuracy")
    assert display[worst].iloc[2] == "52.0 [50.0, 54.0]" and display[worst].iloc[3] == "–"
    assert list(display["worst attack"]) == ["gaussian", "sign_flip", "sign_flip", "–"]


def test_strict_ranks_and_rank_ranges():
    low = np.array([0.70, 0.50, 0.60, np.nan, 0.80])
    high = np.array([0.80, 0.55, 0.72, np.nan, 0.90])
    # 0.80–0.90 overlaps 0.70–0.80 (touching ends overlap) but lies above 0.60–0.72
    assert strict_ranks(low, high).tolist() == [1, 4, 2, 0, 1]
    best, worst = rank_ranges(low, high)
    assert best.tolist() == [1, 4, 2, 0, 1]
    # 0.70–0.80 has 0.50–0.55 entirely below and overlaps 0.60–0.72: places 1 to 3
    assert worst.tolist() == [3, 4, 3, 0, 2]


# -- defense-aware attacks ------------------------------------------------------------------

def test_defenses_never_faced_with_an_aware_attack_are_marked(synthetic: Path):
    assert attack_traits(AWARE).aware and not attack_traits("sign_flip").aware
    assert not attack_traits("no_such_module:Nothing").aware
    assert attack_traits("none").benign
    frame = _frame(synthetic)
    assert frame["adaptive_tested"].dropna().to_dict() == {
        "fedavg": True, "trimmed_mean": False, "median": False}
    assert pd.isna(frame.loc["geomed", "adaptive_tested"])
    data = load(synthetic)
    table = ranking_table(data, comparative_frame(data))
    assert list(table.sections[0].frame["adaptive tested"]) == ["yes", "no", "no", "–"]
    note = next(n for n in table.notes if NOT_AWARE_NOTE in n)
    assert "trimmed_mean" in note and "median" in note and "fedavg" not in note
    # without the aware attack nobody is adaptive-tested
    data = load(synthetic, attacks=["sign_flip", "gaussian"])
    table = ranking_table(data, comparative_frame(data))
    assert list(table.sections[0].frame["adaptive tested"]) == ["no", "no", "no"]
    assert any("no attack in these results is defense-aware" in n for n in table.notes)


# -- in the report --------------------------------------------------------------------------

def test_the_ranking_is_the_reports_first_table_in_every_format(synthetic: Path):
    report = build_report(synthetic)
    assert [t.key for t in report.tables[:2]] == ["ranking", "comparative"]
    md = render_markdown(report)
    assert md.index("## Which defense?") < md.index("## Comparative analysis")
    assert "bootstrap" in md and NOT_AWARE_NOTE in md
    html = render_html(report)
    assert html.index('id="ranking"') < html.index('id="comparative"')
    tidy = report.tables[0].tidy
    for column in ("defense", "malicious_fraction", "rank", "worst_accuracy", "ci_low",
                   "ci_high", "worst_attack", "clean_accuracy", "worst_asr", "fpr",
                   "agg_ms", "adaptive_tested"):
        assert column in tidy.columns, column
    assert "variant" not in tidy.columns  # no extra axis


# -- end to end, and the gate ---------------------------------------------------------------

@pytest.fixture
def tiny_run(fixtures_module: types.ModuleType, tmp_path: Path) -> Path:
    grid = grid_from_dict({
        "name": "tiny", "base": {**TINY_BASE, "malicious_fraction": 0.2},
        "grid": {"attack": ["none", "sign_flip", AWARE], "defense": ["fedavg", "median"],
                 "seed": [0, 1]}})
    out = tmp_path / "res"
    summary = bb.run(grid, out, workers=1)
    assert summary.done == 12 and not summary.failed
    return out


def test_end_to_end_report_and_gate(tiny_run: Path, tmp_path: Path):
    report = runner.invoke(app, ["report", str(tiny_run), "-f", "table,csv"],
                           env={"COLUMNS": "220"})
    assert report.exit_code == 0, report.output
    assert report.output.index("Which defense?") < report.output.index("Comparative analysis")
    ranking = pd.read_csv(tiny_run / "report" / "ranking.csv").set_index("defense")
    assert set(ranking.index) == {"fedavg", "median"}
    assert ranking["adaptive_tested"].all()
    cells = bb.load_results(tiny_run).cells
    attacked = cells[cells["attack"] != "none"]
    means = attacked.groupby(["defense", "attack"])["accuracy"].mean()
    for defense in ("fedavg", "median"):
        assert ranking.loc[defense, "worst_accuracy"] == pytest.approx(means[defense].min())
        assert ranking.loc[defense, "worst_attack"] == means[defense].idxmin()

    # the baseline holds the same worst case, and the gate checks it
    path = tmp_path / "base.json"
    assert runner.invoke(app, ["baseline", str(tiny_run), "-o", str(path)]).exit_code == 0
    data = json.loads(path.read_text())
    assert data["format"] == 2
    entries = {e["axes"]["defense"]: e for e in data["worst_case"]}
    assert set(entries) == {"fedavg", "median"}
    assert entries["median"]["axes"] == {"defense": "median", "malicious_fraction": 0.2}
    for defense, entry in entries.items():
        assert entry["metrics"]["worst_accuracy"] == pytest.approx(
            ranking.loc[defense, "worst_accuracy"])
        assert entry["worst_attack"] == ranking.loc[defense, "worst_attack"]
    passed = runner.invoke(app, ["check", str(tiny_run), "-b", str(path)])
    assert passed.exit_code == 0 and "passed" in passed.output

    entries["median"]["metrics"]["worst_accuracy"] += 0.0625  # exactly representable
    path.write_text(json.dumps(data))
    summary = tmp_path / "summary.md"
    failed = runner.invoke(app, ["check", str(tiny_run), "-b", str(path)],
                           env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert failed.exit_code == 1 and "1 regressed" in failed.output
    regressed = [line for line in summary.read_text().splitlines()
                 if line.endswith("| regressed |")]
    assert len(regressed) == 1 and "defense=median" in regressed[0]
    assert "| worst_accuracy |" in regressed[0] and "-0.0625" in regressed[0]
    at = runner.invoke(app, ["check", str(tiny_run), "-b", str(path),
                             "--tolerance", "worst=0.0625"])
    assert at.exit_code == 0, at.output
    # the per-cell accuracy tolerance does not loosen the worst-case gate
    other = runner.invoke(app, ["check", str(tiny_run), "-b", str(path),
                                "--tolerance", "accuracy=0.5"])
    assert other.exit_code == 1


def test_a_baseline_without_worst_case_entries_still_reads(tiny_run: Path, tmp_path: Path):
    old = make_baseline(tiny_run)
    del old["worst_case"]
    old["format"] = 1
    result = compare(old, tiny_run, parse_tolerances(None))
    assert not result.regressions and not result.missing_now
    assert sorted(result.new_cells) == ["worst case: defense=fedavg malicious_fraction=0.2",
                                        "worst case: defense=median malicious_fraction=0.2"]
    assert not result.passed() and result.passed(allow_missing=True)
    assert any("predates" in note for note in result.notes)
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    strict = runner.invoke(app, ["check", str(tiny_run), "-b", str(path)])
    assert strict.exit_code == 1 and "not in the baseline" in strict.output
    allowed = runner.invoke(app, ["check", str(tiny_run), "-b", str(path), "--allow-missing"])
    assert allowed.exit_code == 0, allowed.output


def test_a_malformed_worst_case_entry_is_one_line(tiny_run: Path, tmp_path: Path):
    data = make_baseline(tiny_run)
    data["worst_case"][0]["metrics"] = {"worst_acc": 0.5}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    result = runner.invoke(app, ["check", str(tiny_run), "-b", str(path)])
    assert result.exit_code == 2
    assert "worst_case[0].metrics.worst_acc: unknown metric" in result.output


def test_defenses_are_ranked_within_each_setting_of_an_extra_axis(tmp_path: Path):
    """An extra axis (here the partition) is a setting: each of its values gets its own
    section and ranks, so a defense is never ranked against another setting's rows."""
    grid = grid_from_dict({
        "name": "axes", "base": TINY_BASE,
        "grid": {"attack": ["none", "sign_flip"], "defense": ["fedavg", "median"],
                 "partition": ["iid", {"name": "dirichlet", "alpha": 0.5, "label": "dir"}],
                 "malicious_fraction": [0.2], "seed": [0, 1]}})
    accuracy = {("fedavg", "iid"): 0.90, ("median", "iid"): 0.50,
                ("fedavg", "dir"): 0.30, ("median", "dir"): 0.80}
    out = tmp_path / "axes"
    with ResultsStore.create(out) as store:
        store.register_grid(grid)
        for cell in grid.cells:
            acc = accuracy[(cell.axes["defense"], cell.axes["partition"])]
            if cell.axes["attack"] == "none":
                acc = 0.95
            store.record("axes", cell, CellResult(status="done", summary={
                "accuracy": acc + 0.01 * int(cell.axes["seed"]), "n": 6, "d": 1210}))
    data = load(out)
    frame = ranking_frame(data, comparative_frame(data))
    ranks = {(d, v): int(r) for d, v, r in zip(frame["defense"], frame["variant"],
                                                frame["rank"])}
    assert ranks == {("fedavg", "partition=iid"): 1, ("median", "partition=iid"): 2,
                     ("median", "partition=dir"): 1, ("fedavg", "partition=dir"): 2}
    table = ranking_table(data, comparative_frame(data))
    assert [s.title for s in table.sections] == [
        "malicious fraction 20%, partition=iid", "malicious fraction 20%, partition=dir"]
    assert list(table.sections[1].frame["defense"]) == ["median", "fedavg"]


def test_a_partial_run_says_how_many_cells_have_no_result_yet(tmp_path: Path):
    """The report names the cells of the grid that have not run (13 of 240 cells stored
    used to look like a finished grid)."""
    grid = grid_from_dict({"name": "part", "base": TINY_BASE,
                           "grid": {"attack": ["none", "sign_flip"], "seed": [0, 1, 2]}})
    out = tmp_path / "part"
    with ResultsStore.create(out) as store:
        store.register_grid(grid)
        for cell in grid.cells[:2]:
            store.record("part", cell, CellResult(status="done", summary={
                "accuracy": 0.9, "n": 6, "d": 1210}))
    report = build_report(out)
    header = "\n".join(report.header)
    assert "partial results: 4 of the grid's 6 cells have no result yet" in header
    data = load(out)
    assert (data.not_run, data.grid_size) == (4, 6)
