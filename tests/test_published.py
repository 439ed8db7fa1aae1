"""A paper's published table in a reference file: parsing, published vs measured, and the
orderings of defenses per attack (agreement %, Kendall τ, contradictions), hand-computed."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import typer
import yaml
from helpers import TINY_BASE, write_grid
from scipy.stats import norm
from typer.testing import CliRunner

from byzbench.config import load_grid
from byzbench.report.command import report
from byzbench.report.published import ordering_frames, overall
from byzbench.report.reference import load_reference, load_reference_file
from byzbench.runner import run_grid

app = typer.Typer(add_completion=False)
app.command("report")(report)


@app.command("noop")
def _noop() -> None:
    """Nothing."""


runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _frame(rows: list[tuple[str, str, str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"table": "T", "column": c, "metric": m, "defense": d,
                          "published": p, "measured": v}
                         for c, m, d, p, v in rows])


def test_orderings_hand_computed():
    frame = _frame([
        # attack A (error rate, lower is better): paper d1 < d2 < d3; measured d2 < d1 < d3
        ("A", "error_rate", "d1", 0.10, 0.30),
        ("A", "error_rate", "d2", 0.20, 0.25),
        ("A", "error_rate", "d3", 0.90, 0.80),
        # attack B: the paper ties d1 and d2
        ("B", "error_rate", "d1", 0.10, 0.10),
        ("B", "error_rate", "d2", 0.10, 0.20),
        ("B", "error_rate", "d3", 0.50, 0.30),
        # attack C, accuracy (higher is better): paper d1 better, measured d2 better
        ("C", "accuracy", "d1", 0.90, 0.70),
        ("C", "accuracy", "d2", 0.80, 0.75),
    ])
    summary, pairs = ordering_frames(frame)
    s = summary.set_index("column")
    # A: pairs (d1,d2) contradicts, (d1,d3) and (d2,d3) agree → 2/3; τ = (2 − 1)/3
    assert (s.loc["A", "agree"], s.loc["A", "contradictions"], s.loc["A", "paper_ties"]) \
        == (2, 1, 0)
    assert s.loc["A", "agreement"] == pytest.approx(2 / 3)
    assert s.loc["A", "kendall_tau"] == pytest.approx(1 / 3)
    # B: (d1,d2) tied in the paper, left out; the other two agree → 2/2;
    # τ-b = (2 − 0) / √((3 − 1)(3 − 0)) = 2/√6
    assert (s.loc["B", "agree"], s.loc["B", "contradictions"], s.loc["B", "paper_ties"]) \
        == (2, 0, 1)
    assert s.loc["B", "agreement"] == 1.0
    assert s.loc["B", "kendall_tau"] == pytest.approx(2 / math.sqrt(6))
    # C: accuracy, the direction flips nothing for τ (both sides the same metric): τ = −1
    assert (s.loc["C", "agree"], s.loc["C", "contradictions"]) == (0, 1)
    assert s.loc["C", "kendall_tau"] == pytest.approx(-1.0)
    contra = pairs[pairs["agrees"] == False]  # noqa: E712
    assert sorted(zip(contra["column"], contra["defense_a"], contra["defense_b"])) == \
        [("A", "d1", "d2"), ("C", "d1", "d2")]
    row = contra[contra["column"] == "A"].iloc[0]
    assert row["paper"].startswith("d1 better than d2")
    assert row["measured"].startswith("d2 better than d1")
    row = contra[contra["column"] == "C"].iloc[0]
    assert row["paper"].startswith("d1 better than d2")
    assert row["measured"].startswith("d2 better than d1")
    totals = overall(summary)
    assert (totals["agree"], totals["strict"]) == (4, 6)
    assert totals["mean_tau"] == pytest.approx((1 / 3 + 2 / math.sqrt(6) - 1) / 3)


def test_a_measured_tie_contradicts_a_strict_paper_order_and_tau_needs_variation():
    frame = _frame([("A", "error_rate", "d1", 0.1, 0.5), ("A", "error_rate", "d2", 0.2, 0.5)])
    summary, pairs = ordering_frames(frame)
    assert summary.iloc[0]["contradictions"] == 1
    assert pairs.iloc[0]["measured_order"] == 0
    assert math.isnan(summary.iloc[0]["kendall_tau"])  # the measured side is constant


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("published")
    grid = load_grid(write_grid(tmp / "tiny.yaml", {
        "name": "tiny", "base": {**TINY_BASE, "malicious_fraction": 0.2},
        "grid": {"attack": ["none", {"name": "sign_flip", "label": "flip"}],
                 "defense": ["fedavg", "median", "krum"], "seed": [0, 1]},
    }))
    out = tmp / "res"
    run_grid(grid, out, workers=1)
    return out


def _reference(path: Path, entries: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"description": "a made-up table for the test",
                                    "source": "test", "table": entries}, sort_keys=False))
    return path


def test_report_shows_published_beside_measured_and_the_orderings(results: Path,
                                                                  tmp_path: Path):
    published = {"fedavg": 0.9, "median": 0.2, "krum": 0.3}
    entries = [{"table": "Table 9", "column": "Sign flip", "attack": "flip", "defense": d,
                "claimed_as": d.title(), "metric": "error_rate", "value": v}
               for d, v in published.items()]
    entries.append({"table": "Table 9", "column": "No attack", "attack": "none",
                    "defense": "fedavg", "metric": "accuracy", "value": "95%",
                    "source": "Table 9, first row"})
    entries.append({"table": "Table 9", "column": "Sign flip", "attack": "sign_flip",
                    "defense": "trimmed_mean", "metric": "error_rate", "value": 0.25})
    ref = _reference(tmp_path / "ref.yaml", entries)
    out = tmp_path / "r"
    result = runner.invoke(app, ["report", str(results), "-o", str(out), "-f", "table,csv,md",
                                 "--reference", str(ref)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "Published versus measured" in result.output
    assert "Orderings" in result.output
    with sqlite3.connect(results / "results.db") as conn:
        cells = pd.read_sql_query("SELECT attack, defense, seed, accuracy FROM cells", conn)
    acc = cells.groupby(["attack", "defense"])["accuracy"].mean()
    side = pd.read_csv(out / "published.csv")
    flip = side[side["column"] == "Sign flip"].set_index("defense")
    for d in published:
        assert flip.loc[d, "measured"] == pytest.approx(1 - acc[("flip", d)])
        assert flip.loc[d, "published"] == pytest.approx(published[d])
        assert flip.loc[d, "seeds"] == 2
    assert flip.loc["trimmed_mean", "status"] == "not run"  # matched by name, never run
    clean = side[side["column"] == "No attack"].iloc[0]
    assert clean["published"] == pytest.approx(0.95)
    assert clean["measured"] == pytest.approx(acc[("none", "fedavg")])
    assert clean["source"] == "Table 9, first row"
    # the ordering of the three defenses, recomputed by hand from the database
    orders = pd.read_csv(out / "orderings.csv").set_index("column")
    measured = {d: 1 - acc[("flip", d)] for d in published}
    agree = contra = 0
    for a, b in [("fedavg", "median"), ("fedavg", "krum"), ("median", "krum")]:
        paper = published[a] < published[b]
        if measured[a] == measured[b]:
            contra += 1
        elif (measured[a] < measured[b]) == paper:
            agree += 1
        else:
            contra += 1
    assert orders.loc["Sign flip", "agree"] == agree
    assert orders.loc["Sign flip", "contradictions"] == contra
    assert "No attack" in orders.index  # a single defense: no pair
    assert orders.loc["No attack", "pairs"] == 0
    pairs = pd.read_csv(out / "contradictions.csv")
    assert len(pairs) == 3 and int((pairs["agrees"] == False).sum()) == contra  # noqa: E712
    md = (out / "report.md").read_text()
    assert "Published versus measured" in md and "Ordering contradictions" in md


def test_old_format_still_loads_and_a_table_only_file_has_no_claims():
    claims, description = load_reference(ROOT / "configs" / "references" /
                                         "seed_document.yaml")
    assert len(claims) == 5 and "seed document" in description
    ref = load_reference_file(ROOT / "configs" / "references" / "seed_document.yaml")
    assert ref.table == []


@pytest.mark.parametrize("entry, key", [
    ({"attack": "a", "defense": "d", "metric": "error_rate", "value": 0.1},
     "table[0].table: missing"),
    ({"table": "T", "attack": "a", "defense": "d", "metric": "eror_rate", "value": 0.1},
     "table[0].metric: unknown metric 'eror_rate'; did you mean 'error_rate'?"),
    ({"table": "T", "attack": "a", "defense": "d", "metric": "error_rate", "value": 10},
     "table[0].value: a rate must lie in [0, 1]"),
    ({"table": "T", "attack": "a", "defense": "d", "metric": "error_rate", "value": 0.1,
      "colum": "x"}, "table[0].colum: unknown key; did you mean 'column'?"),
])
def test_malformed_table_entries_name_the_key(tmp_path: Path, entry: dict, key: str):
    from byzbench.report.reference import ReferenceFileError
    path = tmp_path / "ref.yaml"
    path.write_text(yaml.safe_dump({"source": "s", "table": [entry]}))
    with pytest.raises(ReferenceFileError, match=None) as info:
        load_reference_file(path)
    assert key in str(info.value)


def test_every_table_entry_needs_a_source(tmp_path: Path):
    from byzbench.report.reference import ReferenceFileError
    path = tmp_path / "ref.yaml"
    path.write_text(yaml.safe_dump({"table": [{"table": "T", "attack": "a", "defense": "d",
                                               "metric": "asr", "value": 0.1}]}))
    with pytest.raises(ReferenceFileError, match=r"table\[0\]\.source"):
        load_reference_file(path)


def test_paper_presets_and_reference_files_load():
    presets = sorted((ROOT / "configs" / "papers").glob("*.yaml"))
    assert {p.name for p in presets} >= {"fltrust.yaml", "fltrust-full.yaml",
                                         "bucketing.yaml", "bucketing-full.yaml"}
    for path in presets:
        assert load_grid(path).cells
    for path in sorted((ROOT / "configs" / "papers").glob("fltrust*.yaml")):
        grid = load_grid(path)
        names = {c.config.defense.name for c in grid.cells}
        assert {"fedavg", "krum", "trimmed_mean", "median", "fltrust"} <= names
        for cell in grid.cells:
            assert cell.config.malicious_fraction == 0.2
            assert cell.config.partition.name == "bias"
            assert cell.config.model.params == {"channels": [30, 50], "hidden": 100,
                                                "padding": 0}
    for path in sorted((ROOT / "configs" / "references").glob("*.yaml")):
        load_reference_file(path)


def test_bucketing_reference_entries_come_from_the_authors_files_and_match_the_presets():
    ref = yaml.safe_load((ROOT / "configs" / "references" / "bucketing.yaml").read_text())
    entries = ref["table"]
    assert len(entries) == 41          # 9 from exp2.tex (mimic), 32 from exp3.csv (4 attacks)
    for e in entries:
        assert "epfml/byzantine-robust-noniid-optimizer@0e27349" in e["source"]
        assert ("exp2" in e["source"]) == (e["attack"] == "mimic")
        assert e["metric"] == "accuracy"
    for name in ("bucketing.yaml", "bucketing-full.yaml"):
        grid = load_grid(ROOT / "configs" / "papers" / name)
        pairs = {(c.axes["attack"], c.axes["defense"]) for c in grid.cells}
        missing = {(e["attack"], e["defense"]) for e in entries} - pairs
        assert not missing, (name, missing)
        for cell in grid.cells:
            cfg = cell.config
            assert (cfg.clients, cfg.malicious_fraction) == (25, 0.2)
            assert cfg.partition.name == "shards"
            # one step with local lr 1: the client sends its gradient, so CClip's τ = 10 is
            # in the authors' gradient units and the server lr is their step size
            assert (cfg.local.steps, cfg.local.lr) == (1, 1.0)
            if cfg.defense.name == "centered_clipping":
                assert cfg.defense.params["tau"] == 10.0
            if cfg.attack.name == "alie":
                # the authors' z (codes/attacks/alittle.py): s = ⌊25/2 + 1⌋ − 5 = 8,
                # Φ⁻¹((25 − 5 − 8)/(25 − 5)) = Φ⁻¹(0.6)
                assert cfg.attack.params["z"] == pytest.approx(norm.ppf(0.6), abs=1e-4)
    scaled = load_grid(ROOT / "configs" / "papers" / "bucketing.yaml").cells[0].config
    assert scaled.dataset.name == "fashion_mnist"


def _bucketing_reference_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "bucketing_reference", ROOT / "benchmarks" / "bucketing_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bucketing_reference_script_reads_tables_and_applies_the_authors_rule():
    mod = _bucketing_reference_module()
    tex = ("\\begin{tabular}{lcc}\n\\toprule\nAggr& \\iid& {\\noniid}\\\\\\midrule\n"
           "\\textsc{Avg} & $93.20\\!\\pm\\!0.21$ & $92.73\\!\\pm\\!0.32$ \\\\\n"
           "\\krum & $90.36\\!\\pm\\!0.25$ & $37.33\\!\\pm\\!6.78$ \\\\\n\\bottomrule\n")
    assert mod.exp2_noniid(tex) == {"Avg": 92.73, "KRUM": 37.33}
    # seed 0: evaluations 10..70 → the last 5 are 30..70, mean 50; seed 1: 60 → 60
    # (fewer than 5); momentum-0.9 rows are ignored; mean over seeds: 55
    lines = ["Iterations,Accuracy (%),ATK,AGG,$\\beta$,seed,s"]
    lines += [f"{30 * i},{10 * i},BF,KRUM,0.0,0,0" for i in range(7, 0, -1)]
    lines += ["30,60,BF,KRUM,0.0,1,0", "600,99,BF,KRUM,0.9,0,0"]
    table = mod.exp3_table("\n".join(lines))
    assert len(table) == 1
    row = table.iloc[0]
    assert row["mean"] == pytest.approx(55.0) and row["count"] == 2
