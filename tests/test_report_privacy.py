"""The report's measured privacy table on a small real run (byzbench run + byzbench report):
its numbers against the database rows, and its absence for results without privacy."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from helpers import TINY_BASE, write_grid
from typer.testing import CliRunner

from byzbench.cli import app
from byzbench.config import DPConfig
from byzbench.privacy.dp import DPMechanism

runner = CliRunner()
SETTINGS = [{"label": "none"},
            {"label": "SecAgg+", "secure_aggregation": "secagg+"},
            {"label": "central ε=8", "dp": {"mode": "central", "epsilon": 8}},
            {"label": "local σ=2", "dp": {"mode": "local", "sigma": 2.0, "clip": 0.5}}]


@pytest.fixture(scope="module")
def privacy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("privacy")
    grid = write_grid(tmp / "priv.yaml", {
        "name": "priv", "base": {**TINY_BASE, "malicious_fraction": 0.2},
        "grid": {"attack": ["none", "sign_flip", "alie"], "defense": ["fedavg", "krum"],
                 "privacy": SETTINGS, "seed": [0]}})
    out = tmp / "res"
    ran = runner.invoke(app, ["run", str(grid), "-o", str(out), "-w", "1", "--quiet"])
    assert ran.exit_code == 0, ran.output
    shown = runner.invoke(app, ["report", str(out), "-o", str(tmp / "rep"),
                                "--format", "md,csv"])
    assert shown.exit_code == 0, shown.output
    return tmp


def _cells(db: Path) -> pd.DataFrame:
    with sqlite3.connect(db) as conn:
        return pd.read_sql_query("SELECT * FROM cells", conn)


def test_privacy_table_numbers_equal_the_database_rows(privacy_run: Path):
    table = pd.read_csv(privacy_run / "rep" / "privacy.csv")
    cells = _cells(privacy_run / "res" / "results.db")
    cells["setting"] = [json.loads(a)["privacy"] for a in cells["axes"]]
    assert len(table) == 2 * 4  # defenses × settings
    names = {"none": "none", "SecAgg+": "SecAgg+", "central ε=8": "central DP ε=8",
             "local σ=2": "local DP σ=2"}
    # under SecAgg+ krum is skipped with the secure aggregation reason, fedavg runs and is timed
    krum = table[(table["defense"] == "krum") & (table["privacy"] == "SecAgg+")].iloc[0]
    assert krum["cells_done"] == 0 and krum["cells_skipped"] == 3
    assert krum["skip_reason"].startswith("secure aggregation:")
    fedavg = table[(table["defense"] == "fedavg") & (table["privacy"] == "SecAgg+")].iloc[0]
    assert fedavg["cells_done"] == 3 and fedavg["secagg_ms"] > 0
    with sqlite3.connect(privacy_run / "res" / "results.db") as conn:
        timed = pd.read_sql_query(
            "SELECT r.cell_id, r.secagg_ms FROM rounds r JOIN cells c USING (cell_id) WHERE "
            "c.defense = 'fedavg' AND c.config LIKE '%\"secure_aggregation\": \"secagg+\"%'",
            conn)
    assert len(timed) == 3 * 3 and (timed["secagg_ms"] > 0).all()
    per_cell = timed.groupby("cell_id")["secagg_ms"].median()
    assert fedavg["secagg_ms"] == pytest.approx(per_cell.median())
    done = cells[cells["status"] == "done"]
    for _, row in done.groupby(["defense", "setting"]).first().reset_index().iterrows():
        got = table[(table["defense"] == row["defense"])
                    & (table["privacy"] == names[row["setting"]])].iloc[0]
        group = done[(done["defense"] == row["defense"]) & (done["setting"] == row["setting"])]
        attacked = group[group["attack"] != "none"]
        assert got["clean_accuracy"] == pytest.approx(
            group.loc[group["attack"] == "none", "accuracy"].iloc[0])
        assert got["attacked_accuracy"] == pytest.approx(attacked["accuracy"].mean())
        assert got["worst_accuracy"] == pytest.approx(attacked["accuracy"].min())
        if row["setting"] in ("none", "SecAgg+"):
            assert math.isinf(got["epsilon"]) and got["dp_mode"] == "none"
        else:
            assert got["epsilon"] == pytest.approx(group["epsilon"].mean())
            assert got["sigma"] == pytest.approx(group["sigma"].iloc[0])
        if row["defense"] == "krum":
            tp, fn = attacked["tp"].sum(), attacked["fn"].sum()
            assert got["detection_rate"] == pytest.approx(tp / (tp + fn))
    # the accountant's own numbers: central ε=8 calibrated, local σ=2 over 3 rounds at q = 1
    central = table[table["privacy"] == "central DP ε=8"]
    assert central["epsilon"].iloc[0] == pytest.approx(8.0, rel=1e-2)
    local = DPMechanism.from_config(DPConfig(mode="local", sigma=2.0), 6, 6, 3)
    assert table[table["privacy"] == "local DP σ=2"]["epsilon"].iloc[0] == pytest.approx(
        local.epsilon)
    with sqlite3.connect(privacy_run / "res" / "results.db") as conn:
        eps = conn.execute("SELECT r.round, r.epsilon FROM rounds r JOIN cells c USING "
                           "(cell_id) WHERE c.defense = 'krum' AND c.attack = 'none' "
                           "AND c.config LIKE '%\"mode\": \"local\"%' ORDER BY r.round"
                           ).fetchall()
    assert [e for _, e in eps] == pytest.approx(list(local.epsilons))


def test_privacy_section_in_the_documents(privacy_run: Path):
    md = (privacy_run / "rep" / "report.md").read_text()
    assert "## Privacy, measured" in md
    section = md[md.index("## Privacy, measured"):]
    assert "| defense | none | SecAgg+ | central DP ε=8 | local DP σ=2 |" in section
    assert "| krum | skipped: secure aggregation: krum needs" in section
    assert "the ε each setting spent" in section


def test_results_without_privacy_have_no_privacy_table(tmp_path: Path):
    grid = write_grid(tmp_path / "plain.yaml", {
        "name": "plain", "base": TINY_BASE,
        "grid": {"attack": ["none"], "defense": ["fedavg"], "seed": [0]}})
    assert runner.invoke(app, ["run", str(grid), "-o", str(tmp_path / "res"), "-w", "1",
                               "--quiet"]).exit_code == 0
    shown = runner.invoke(app, ["report", str(tmp_path / "res"), "-o", str(tmp_path / "rep"),
                                "--format", "md,csv"])
    assert shown.exit_code == 0, shown.output
    assert not (tmp_path / "rep" / "privacy.csv").exists()
    assert "Privacy, measured" not in (tmp_path / "rep" / "report.md").read_text()


def test_bad_dp_config_is_one_line(tmp_path: Path):
    grid = write_grid(tmp_path / "bad.yaml", {
        "name": "bad", "base": {**TINY_BASE, "privacy": {"dp": {"mode": "central"}}},
        "grid": {"seed": [0]}})
    out = runner.invoke(app, ["run", str(grid), "-o", str(tmp_path / "res")])
    assert out.exit_code == 2
    text = out.output.strip()
    assert "Traceback" not in text and "privacy.dp" in text and "sigma" in text
    assert len([line for line in text.splitlines() if line.strip()]) == 1
