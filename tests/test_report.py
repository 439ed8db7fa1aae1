"""byzbench report: files, columns, numbers recomputed from the database rows, n/a detection,
skipped and failed cells, reference claims, filters, and the exit codes of unusable input."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import typer
from helpers import TINY_BASE, write_grid
from typer.testing import CliRunner

from byzbench.config import load_grid
from byzbench.engine.simulation import CellResult
from byzbench.report.build import build_report
from byzbench.report.command import report
from byzbench.report.privacy import privacy_facts
from byzbench.report.writers import render_markdown
from byzbench.runner import run_grid
from byzbench.store import ResultsStore

app = typer.Typer(add_completion=False)
app.command("report")(report)


@app.command("noop")
def _noop() -> None:  # a second command keeps 'report' a subcommand, as in byzbench.cli
    """Nothing."""


runner = CliRunner()
REFERENCE = Path(__file__).resolve().parents[1] / "configs" / "references" / "seed_document.yaml"
PLOTS = ["accuracy_heatmap.png", "detection_vs_fpr.png", "accuracy_vs_fraction.png",
         "curves.png", "aggregation_cost.png"]
CSVS = ["comparative.csv", "accuracy.csv", "detection.csv", "backdoor_asr.csv",
        "skipped_failed.csv", "curves.csv"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run: 4 defenses (two that flag nobody: fedavg, median) × 3 attacks × 2
    fractions × 2 seeds; krum and multikrum are skipped at 40% (n = 6 ≤ 2f + 2); plus one
    failed cell recorded directly."""
    tmp = tmp_path_factory.mktemp("report")
    grid = load_grid(write_grid(tmp / "tiny.yaml", {
        "name": "tiny", "base": TINY_BASE,
        "grid": {"attack": ["none", "sign_flip", "backdoor"],
                 "defense": ["fedavg", "median", "krum", "multikrum"],
                 "malicious_fraction": [0.2, 0.4], "seed": [0, 1]},
    }))
    out = tmp / "res"
    summary = run_grid(grid, out, workers=1)
    assert summary.skipped == 2 * 3 * 2 and not summary.failed
    broken = load_grid(write_grid(tmp / "broken.yaml", {
        "name": "broken", "base": TINY_BASE,
        "grid": {"attack": ["sign_flip"], "defense": ["fedavg"], "malicious_fraction": [0.2],
                 "seed": [9]},
    })).cells[0]
    with ResultsStore.open(out) as store:
        store.record("broken", broken, CellResult(status="failed",
                                                  error="RuntimeError: boom in round 1"))
    return out


@pytest.fixture(scope="module")
def full_report(results: Path) -> tuple[Path, str]:
    out = results / "report"
    result = runner.invoke(app, ["report", str(results), "--format", "table,md",
                                 "-f", "csv", "--format", "html", "--reference",
                                 str(REFERENCE)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return out, result.output


def _db(results: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    with sqlite3.connect(results / "results.db") as conn:
        cells = pd.read_sql_query("SELECT * FROM cells", conn)
        rounds = pd.read_sql_query(
            "SELECT r.*, c.attack, c.defense, c.malicious_fraction, c.seed, c.grid "
            "FROM rounds r JOIN cells c USING (cell_id)", conn)
    return cells[cells["grid"] == "tiny"], rounds[rounds["grid"] == "tiny"]


def test_report_writes_every_file_with_its_columns(full_report: tuple[Path, str]):
    out, output = full_report
    for name in [*PLOTS, *CSVS, "reference.csv", "report.md", "report.html"]:
        assert (out / name).is_file(), name
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    columns = {
        "accuracy.csv": ["defense", "attack", "malicious_fraction", "accuracy_mean",
                         "accuracy_std", "n"],
        "detection.csv": ["defense", "attack", "malicious_fraction", "tp", "fp", "fn", "tn",
                          "detection_rate", "fpr", "precision", "f1", "n"],
        "backdoor_asr.csv": ["defense", "attack", "malicious_fraction", "asr_mean", "asr_std",
                             "n"],
        "comparative.csv": ["defense", "detection_rate", "fpr", "precision", "accuracy_mean",
                            "accuracy_std", "n", "worst_accuracy_mean", "accuracy_drop_mean",
                            "asr_mean", "agg_ms", "clients_per_round", "d",
                            "plaintext_updates", "server_data", "client_state"],
        "skipped_failed.csv": ["status", "defense", "malicious_fraction", "attacks", "seeds",
                               "reason"],
        "reference.csv": ["reference_defense", "metric", "claimed", "measured", "difference",
                          "source"],
    }
    for name, wanted in columns.items():
        frame = pd.read_csv(out / name)
        assert set(wanted) <= set(frame.columns), (name, frame.columns.tolist())
    md = (out / "report.md").read_text()
    for title in ("Comparative analysis", "Accuracy under attack",
                  "Detection rate and false-positive rate", "Backdoor attack-success rate",
                  "Skipped and failed cells", "Claimed versus measured"):
        assert f"## {title}" in md
        assert title in output  # the terminal tables
    for name in PLOTS:
        assert f"]({name})" in md


def test_numbers_equal_the_database_rows(results: Path, full_report: tuple[Path, str]):
    out, _ = full_report
    cells, rounds = _db(results)
    done = cells[cells["status"] == "done"]

    # accuracy: mean ± std (sample std) over seeds per defense, attack, fraction
    ours = pd.read_csv(out / "accuracy.csv")
    truth = done.groupby(["defense", "attack", "malicious_fraction"])["accuracy"].agg(
        ["mean", "std", "count"]).reset_index()
    merged = truth.merge(ours, on=["defense", "attack", "malicious_fraction"])
    assert len(merged) == len(truth) == len(ours)
    assert merged["accuracy_mean"].to_numpy() == pytest.approx(merged["mean"].to_numpy())
    assert merged["accuracy_std"].to_numpy() == pytest.approx(merged["std"].to_numpy())
    assert (merged["n"] == merged["count"]).all()

    # detection: counts summed over rounds and seeds, then divided (micro average)
    ours = pd.read_csv(out / "detection.csv")
    decided = rounds[rounds["defense"].isin(["krum", "multikrum"])]
    sums = decided.groupby(["defense", "attack", "malicious_fraction"])[
        ["tp", "fp", "fn", "tn"]].sum().reset_index()
    merged = sums.merge(ours, on=["defense", "attack", "malicious_fraction"],
                        suffixes=("", "_ours"))
    assert len(merged) == len(sums) > 0
    for key in ("tp", "fp", "fn", "tn"):
        assert (merged[key] == merged[f"{key}_ours"]).all()
    fpr = merged["fp"] / (merged["fp"] + merged["tn"])
    assert merged["fpr"].to_numpy() == pytest.approx(fpr.to_numpy())
    has_malicious = merged["tp"] + merged["fn"] > 0
    rate = merged["tp"] / (merged["tp"] + merged["fn"])
    assert merged.loc[has_malicious, "detection_rate"].to_numpy() == pytest.approx(
        rate[has_malicious].to_numpy())
    assert merged.loc[~has_malicious, "detection_rate"].isna().all()  # attack none: undefined

    # comparative: detection over every attacked round of the defense; accuracy under
    # attack = per-seed mean over attacked cells, then mean ± std over seeds
    comp = pd.read_csv(out / "comparative.csv").set_index("defense")
    attacked_rounds = rounds[(rounds["defense"] == "krum") & (rounds["attack"] != "none")]
    tp, fn = attacked_rounds["tp"].sum(), attacked_rounds["fn"].sum()
    fp, tn = attacked_rounds["fp"].sum(), attacked_rounds["tn"].sum()
    assert comp.loc["krum", "detection_rate"] == pytest.approx(tp / (tp + fn))
    assert comp.loc["krum", "fpr"] == pytest.approx(fp / (fp + tn))
    assert comp.loc["krum", "precision"] == pytest.approx(tp / (tp + fp))
    attacked = done[(done["defense"] == "median") & (done["attack"] != "none")]
    per_seed = attacked.groupby("seed")["accuracy"].mean()
    assert comp.loc["median", "accuracy_mean"] == pytest.approx(per_seed.mean())
    assert comp.loc["median", "accuracy_std"] == pytest.approx(per_seed.std())
    assert comp.loc["median", "n"] == 2
    base = done[(done["defense"] == "median") & (done["attack"] == "none")]
    drop = attacked.merge(base[["seed", "malicious_fraction", "accuracy"]],
                          on=["seed", "malicious_fraction"], suffixes=("", "_base"))
    drop_per_seed = (drop["accuracy_base"] - drop["accuracy"]).groupby(drop["seed"]).mean()
    assert comp.loc["median", "accuracy_drop_mean"] == pytest.approx(drop_per_seed.mean())
    backdoor = done[(done["defense"] == "fedavg") & (done["attack"] == "backdoor")]
    assert comp.loc["fedavg", "asr_mean"] == pytest.approx(
        backdoor.groupby("seed")["asr"].mean().mean())
    assert comp.loc["krum", "agg_ms"] == pytest.approx(
        done.loc[done["defense"] == "krum", "agg_ms"].median())
    assert comp.loc["fedavg", "plaintext_updates"] == "no"
    assert comp.loc["krum", "plaintext_updates"] == "yes"

    # the markdown shows the same accuracy, in percent, with ± std
    md = (out / "report.md").read_text()
    row = truth[(truth["defense"] == "krum") & (truth["attack"] == "sign_flip")].iloc[0]
    assert f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f}" in md


def test_detection_is_na_where_the_defense_flags_nobody(full_report: tuple[Path, str]):
    out, _ = full_report
    comp = pd.read_csv(out / "comparative.csv").set_index("defense")
    for defense in ("fedavg", "median"):
        assert not comp.loc[defense, "decides_per_client"]
        assert pd.isna(comp.loc[defense, "detection_rate"])
    assert comp.loc["krum", "decides_per_client"]
    det = pd.read_csv(out / "detection.csv")
    assert not det.loc[det["defense"] == "median", "decides_per_client"].any()
    assert det.loc[det["defense"] == "krum", "decides_per_client"].all()
    md = (out / "report.md").read_text()
    assert "| median | n/a | n/a | n/a |" in md
    assert "| fedavg | n/a | n/a | n/a |" in md


def test_skipped_and_failed_cells_are_listed_with_reasons(full_report: tuple[Path, str]):
    out, output = full_report
    table = pd.read_csv(out / "skipped_failed.csv")
    skipped = table[table["status"] == "skipped"]
    assert set(skipped["defense"]) == {"krum", "multikrum"}
    assert (skipped["malicious_fraction"] == 0.4).all()
    assert skipped["reason"].str.contains("2f + 2", regex=False).all()
    assert set(skipped["cells"]) == {6}
    failed = table[table["status"] == "failed"]
    assert len(failed) == 1 and "boom in round 1" in failed["reason"].iloc[0]
    md = (out / "report.md").read_text()
    assert "boom in round 1" in md and "krum needs n > 2f + 2" in md
    assert "skipped" in output and "boom in round 1" in output
    acc = md.split("## Accuracy under attack")[1].split("## ")[0]
    assert "skipped" in acc  # the accuracy table shows the skipped cells, not a blank


def test_reference_claims_beside_measured(full_report: tuple[Path, str]):
    out, _ = full_report
    ref = pd.read_csv(out / "reference.csv").set_index("reference_defense")
    comp = pd.read_csv(out / "comparative.csv").set_index("defense")
    assert ref.loc["krum", "claimed"] == pytest.approx(0.68)
    assert ref.loc["krum", "source"] == "seed document"
    assert ref.loc["krum", "measured"] == pytest.approx(comp.loc["krum", "detection_rate"])
    assert ref.loc["krum", "difference"] == pytest.approx(
        comp.loc["krum", "detection_rate"] - 0.68)
    assert ref.loc["signguard", "status"] == "not run"
    assert ref.loc["signguard", "claimed"] == pytest.approx(0.94)


def test_html_is_self_contained(full_report: tuple[Path, str]):
    out, _ = full_report
    html = (out / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == len(PLOTS)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in html and "http://" not in html and "https://" not in html
    assert "Comparative analysis" in html and "n/a" in html


def test_filters_and_curves(results: Path, tmp_path: Path):
    out = tmp_path / "filtered"
    result = runner.invoke(app, ["report", str(results), "-o", str(out), "-f", "csv",
                                 "--defense", "krum,median", "--fraction", "20%",
                                 "--attack", "sign_flip", "--curves",
                                 "attack=sign_flip,defense=krum"])
    assert result.exit_code == 0, result.output
    acc = pd.read_csv(out / "accuracy.csv")
    assert set(acc["defense"]) == {"krum", "median"}
    assert set(acc["attack"]) == {"sign_flip"} and set(acc["malicious_fraction"]) == {0.2}
    comp = pd.read_csv(out / "comparative.csv").set_index("defense")
    assert comp["accuracy_drop_mean"].notna().all()  # the no-attack baseline is kept
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["defense"]) == {"krum"} and (curves["n"] == 2).all()
    assert not (out / "report.md").exists() and not list(out.glob("*.png"))


@pytest.mark.parametrize("args, message", [
    (["--attack", "alei"], "--attack 'alei' matches no cell"),
    (["--fraction", "0.3"], "--fraction 0.3 matches no cell"),
    (["--curves", "atack=none"], "unknown key 'atack'; did you mean 'attack'?"),
    (["--format", "pdf"], "unknown format 'pdf'"),
])
def test_unusable_options_exit_2(results: Path, tmp_path: Path, args: list[str],
                                 message: str):
    result = runner.invoke(app, ["report", str(results), "-o", str(tmp_path), "-f", "table",
                                 *args], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert message in result.output


def test_no_database_or_an_empty_one_exit_2(tmp_path: Path):
    (tmp_path / "nothing").mkdir()
    result = runner.invoke(app, ["report", str(tmp_path / "nothing")], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "no results database" in result.output
    result = runner.invoke(app, ["report", str(tmp_path / "absent")], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "no results directory" in result.output
    ResultsStore.create(tmp_path / "empty").close()
    result = runner.invoke(app, ["report", str(tmp_path / "empty")], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "holds no cells" in result.output
    assert not (tmp_path / "empty" / "report").exists()


@pytest.mark.parametrize("text, key", [
    ("defenses:\n  krum:\n    source: x\n    detecton_rate: 0.5\n",
     "defenses.krum.detecton_rate: unknown metric; did you mean 'detection_rate'?"),
    ("defenses:\n  krum:\n    source: x\n    detection_rate: 68\n",
     "defenses.krum.detection_rate: a rate must lie in [0, 1]"),
    ("defenses:\n  krum:\n    detection_rate: 0.68\n", "defenses.krum.source"),
    ("defenses:\n  krum:\n    source: x\n    fpr: lots\n", "defenses.krum.fpr: not a number"),
    ("defenses:\n  krum: 0.68\n", "defenses.krum: must be a mapping"),
    ("defences:\n  krum: {}\n", "defences: unknown key; did you mean 'defenses'?"),
    ("defenses: [1\n", "invalid YAML at line 2"),
])
def test_malformed_reference_exit_2_naming_the_key(results: Path, tmp_path: Path, text: str,
                                                   key: str):
    path = tmp_path / "ref.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["report", str(results), "-o", str(tmp_path / "r"), "-f",
                                 "table", "--reference", str(path)], env={"COLUMNS": "400"})
    assert result.exit_code == 2
    assert f"reference file {path}: " in result.output
    assert key in result.output


def test_privacy_facts_of_pipelines_and_unknown_names():
    facts = privacy_facts("pipeline", {"layers": ["fedavg", {"name": "reputation"}]})
    assert facts == {"needs_plaintext_updates": True, "needs_server_data": False,
                     "keeps_client_state": True}
    assert privacy_facts("fedavg")["needs_plaintext_updates"] is False
    assert set(privacy_facts("no_such_defense").values()) == {"unknown"}
    mixed = privacy_facts("pipeline", {"layers": ["fedavg", "no_such_defense"]})
    assert mixed["needs_plaintext_updates"] == "unknown"
    assert privacy_facts("pipeline", {"layers": ["fltrust", "no_such_defense"]})[
        "needs_server_data"] is True


def test_extra_axes_become_separate_rows(tmp_path: Path):
    grid = load_grid(write_grid(tmp_path / "lr.yaml", {
        "name": "lr", "base": {**TINY_BASE, "rounds": 2},
        "grid": {"attack": ["none", "sign_flip"], "defense": ["krum"],
                 "malicious_fraction": [0.2], "seed": [0], "local.lr": [0.05, 0.1]},
    }))
    run_grid(grid, tmp_path / "res", workers=1)
    result = runner.invoke(app, ["report", str(tmp_path / "res"), "-f", "csv"])
    assert result.exit_code == 0, result.output
    comp = pd.read_csv(tmp_path / "res" / "report" / "comparative.csv")
    assert sorted(comp["variant"]) == ["local.lr=0.05", "local.lr=0.1"]
    md = render_markdown(build_report(tmp_path / "res"))  # the document, without the plots
    assert "| krum [local.lr=0.05] |" in md and "| krum [local.lr=0.1] |" in md


def test_cells_of_an_earlier_grid_version_are_left_out(tmp_path: Path):
    raw = {"name": "edit", "base": {**TINY_BASE, "rounds": 2},
           "grid": {"attack": ["none"], "defense": ["fedavg"], "malicious_fraction": [0.2],
                    "seed": [0, 1]}}
    run_grid(load_grid(write_grid(tmp_path / "a.yaml", raw)), tmp_path / "res", workers=1)
    raw["base"] = {**TINY_BASE, "rounds": 3}  # edited: new cell ids, same labels
    run_grid(load_grid(write_grid(tmp_path / "b.yaml", raw)), tmp_path / "res", workers=1)
    result = runner.invoke(app, ["report", str(tmp_path / "res"), "-f", "table,csv"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    acc = pd.read_csv(tmp_path / "res" / "report" / "accuracy.csv")
    assert acc["n"].tolist() == [2]  # not 4: the two rounds=2 cells are not mixed in
    assert "2 cells of an earlier version of the grid are not reported" in result.output


def test_plots_are_honest_at_a_glance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """One accuracy axis for every attack panel; on a log cost axis no hatched part of a bar
    (it would not be to scale), the verification share written beside the bar instead."""
    from byzbench.report import plots

    grid = load_grid(write_grid(tmp_path / "p.yaml", {
        "name": "p", "base": TINY_BASE,
        "grid": {"attack": ["sign_flip", {"name": "ipm", "epsilon": 100, "label": "ipm"}],
                 "defense": ["fedavg", "ecdsa+multikrum"], "malicious_fraction": [0.2, 0.4],
                 "seed": [0]}}))
    run_grid(grid, tmp_path / "res", workers=1)
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(path.name, fig))
    build_report(tmp_path / "res")  # draws the plots through _save
    from byzbench.report.build import write_report
    write_report(build_report(tmp_path / "res"), tmp_path / "out", ["md"])
    panels = [ax for ax in figures["accuracy_vs_fraction.png"].axes if ax.get_visible()
              and ax.get_title().startswith("attack:")]
    assert len(panels) == 2 and len({ax.get_ylim() for ax in panels}) == 1
    cost = figures["aggregation_cost.png"].axes[0]
    labels = [t.get_text() for t in cost.texts]
    assert any("% verifying signatures" in text for text in labels)
    if cost.get_xscale() == "log":
        assert not [p for p in cost.patches if p.get_hatch()]
    else:
        assert [p for p in cost.patches if p.get_hatch()]
