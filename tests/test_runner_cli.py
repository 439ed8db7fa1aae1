"""The runner and the CLI end to end: store, resume, failures, workers, exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import TINY_BASE, default_sigint, wait_for_cells, write_grid
from typer.testing import CliRunner

import byzbench.api as bb
from byzbench.cli import app
from byzbench.config import load_grid
from byzbench.runner import run_grid
from byzbench.store import ResultsStore, StoreError

runner = CliRunner()
METRICS = ["accuracy", "loss", "tp", "fp", "fn", "tn", "diverged"]


def test_run_stores_cells_and_rounds_then_resumes(tiny_grid: Path, tmp_path: Path):
    out = tmp_path / "res"
    grid = load_grid(tiny_grid)
    first = run_grid(grid, out, workers=1)
    assert (first.done, first.reused, first.failed) == (4, 0, [])
    res = bb.load_results(out)
    assert len(res.cells) == 4 and set(res.cells["status"]) == {"done"}
    assert len(res.rounds) == 4 * 3
    assert res.cells["accuracy"].between(0, 1).all()
    again = run_grid(grid, out, workers=1)
    assert (again.done, again.reused) == (0, 4)
    forced = run_grid(grid, out, workers=1, force=True)
    assert forced.done == 4
    assert len(bb.load_results(out).rounds) == 4 * 3  # replaced, not duplicated


def test_editing_a_grid_runs_only_new_cells(tiny_grid: Path, tmp_path: Path):
    out = tmp_path / "res"
    run_grid(load_grid(tiny_grid), out, workers=1)
    raw = {"name": "tiny", "base": TINY_BASE,
           "grid": {"attack": ["none"], "defense": ["fedavg"],
                    "malicious_fraction": [0.0, 0.2], "seed": [0, 1, 2]}}
    summary = run_grid(load_grid(write_grid(tmp_path / "more.yaml", raw)), out, workers=1)
    assert (summary.reused, summary.done) == (4, 2)


def test_workers_1_and_2_give_identical_numbers(tiny_grid: Path, tmp_path: Path):
    grid = load_grid(tiny_grid)
    run_grid(grid, tmp_path / "w1", workers=1)
    run_grid(grid, tmp_path / "w2", workers=2)
    a = bb.load_results(tmp_path / "w1").cells.set_index("cell_id").sort_index()
    b = bb.load_results(tmp_path / "w2").cells.set_index("cell_id").sort_index()
    assert list(a.index) == list(b.index)
    assert a[METRICS].equals(b[METRICS])
    ra = bb.load_results(tmp_path / "w1").rounds.sort_values(["cell_id", "round"])
    rb = bb.load_results(tmp_path / "w2").rounds.sort_values(["cell_id", "round"])
    assert ra["accuracy"].tolist() == rb["accuracy"].tolist()


def _threads(results: Path) -> set[int]:
    import json
    import sqlite3

    with sqlite3.connect(results / "results.db") as conn:
        return {json.loads(m)["threads"] for (m,) in conn.execute("SELECT metrics FROM cells")}


@pytest.mark.parametrize(("workers", "threads", "expected"),
                         [(1, None, 1), (1, 2, 2), (2, 1, 1), (2, None, 1), (2, 2, 2)])
def test_cli_threads_option_sets_torch_threads_per_worker(tiny_grid: Path, tmp_path: Path,
                                                          workers, threads, expected):
    out = tmp_path / "res"
    args = ["run", str(tiny_grid), "-o", str(out), "-q", "-w", str(workers)]
    result = runner.invoke(app, args + ([] if threads is None else ["-t", str(threads)]))
    assert result.exit_code == 0, result.output
    assert _threads(out) == {expected}


def test_inline_run_defaults_to_one_thread_and_restores_the_callers(tiny_grid: Path,
                                                                     tmp_path: Path):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_grid(load_grid(tiny_grid), tmp_path / "res", workers=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert _threads(tmp_path / "res") == {1}


def test_api_run_cell_uses_one_thread_and_restores_the_callers(tiny_grid: Path):
    import torch

    config = load_grid(tiny_grid).cells[0].config
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert bb.run_cell(config).summary["threads"] == 1
        assert torch.get_num_threads() == 2
        assert bb.run_cell(config, threads=2).summary["threads"] == 2
        with pytest.raises(bb.ConfigError, match="threads"):
            bb.run_cell(config, threads=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_cli_threads_option_rejects_ray_and_zero(tiny_grid: Path):
    bad = runner.invoke(app, ["run", str(tiny_grid), "-t", "0"])
    assert bad.exit_code == 2 and "--threads" in bad.output and "1" in bad.output
    ray = runner.invoke(app, ["run", str(tiny_grid), "-e", "ray", "-t", "2"])
    assert ray.exit_code != 0 and "--cpus-per-cell" in ray.output


def test_preload_fills_the_dataset_cache_and_leaves_failures_to_the_cell(tmp_path: Path):
    from byzbench.config import ComponentSpec
    from byzbench.data import datasets
    from byzbench.runner import preload_datasets

    datasets.clear_dataset_cache()
    missing = ComponentSpec(name="mnist", params={"root": str(tmp_path / "none"),
                                                  "download": False})
    preload_datasets([missing, ComponentSpec(name="digits")])  # the failure is not raised
    assert datasets._load_cached.cache_info().currsize == 1
    datasets.Digits(datasets.Digits.Params()).load()
    assert datasets._load_cached.cache_info().hits == 1  # the cell finds it loaded


def test_pool_cells_are_stamped_with_their_own_start(tiny_grid: Path, tmp_path: Path):
    import sqlite3

    run_grid(load_grid(tiny_grid), tmp_path / "res", workers=2)
    with sqlite3.connect(tmp_path / "res" / "results.db") as conn:
        rows = conn.execute("SELECT started, finished, wall_s FROM cells").fetchall()
    assert len(rows) == 4
    assert all(finished - started >= wall_s > 0 for started, finished, wall_s in rows)



def test_the_pool_keeps_one_cell_waiting_beyond_its_workers(tiny_grid: Path, tmp_path: Path):
    """With 2 workers, 3 of the 4 cells are handed out at once, and the 4th as soon as one
    of them ends, before that one is stored (a finishing worker finds its next cell queued);
    every started cell ends."""
    events: list[tuple[str, str | None]] = []
    summary = run_grid(load_grid(tiny_grid), tmp_path / "res", workers=2,
                       on_event=lambda kind, cell, result: events.append(
                           (kind, result.status if result is not None else None)))
    assert summary.done == 4
    assert [kind for kind, _ in events[:4]] == ["start"] * 4
    assert sorted(events[4:]) == [("end", "done")] * 4


def _cell(defense, **extra):
    from byzbench.config import grid_from_dict

    return grid_from_dict({"name": "one", "base": {**TINY_BASE, **extra},
                           "grid": {"defense": [defense], "malicious_fraction": [0.2]}}).cells[0]


def _cell_config(defense, **extra):
    return _cell(defense, **extra).config


def test_lazy_imports_name_what_a_cells_components_import_on_first_use():
    from byzbench.executors import lazy_imports

    assert lazy_imports(_cell_config("fedavg")) == []
    assert lazy_imports(_cell_config("flame")) == ["sklearn.cluster"]
    assert lazy_imports(_cell_config("clipped_clustering")) == ["sklearn.cluster"]
    # a pipeline: its layers' modules, each once
    assert lazy_imports(_cell_config("norm_clip+clipped_clustering")) == ["sklearn.cluster"]
    dp = {"privacy": {"dp": {"mode": "central", "clip": 1.0, "sigma": 1.0}}}
    assert lazy_imports(_cell_config("flame", **dp)) == ["sklearn.cluster", "dp_accounting"]


def test_the_engine_imports_no_scikit_learn_clustering_and_no_dp_accounting():
    """What the forkserver and the CLI import: the heavy modules only some cells need are
    not among them (each costs ~0.5–0.9 s of every run's start-up)."""
    code = ("import sys, byzbench.engine.simulation, byzbench.attacks, byzbench.defenses, "
            "byzbench.runner; print(sorted(m for m in ('sklearn.cluster', 'dp_accounting') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("entry", ["executor", "api"])
def test_a_cells_lazy_imports_happen_before_its_clock_starts(entry: str):
    """A fresh interpreter runs a FLAME cell with DP through a grid's executor
    (``execute_cell``) or the Python API (``api.run_cell``): scikit-learn's clustering and
    dp-accounting are already imported when the simulation's ``run_cell`` (the timed part)
    starts, and the cell completes."""
    code = textwrap.dedent("""
        import sys
        import byzbench.api as api
        import byzbench.engine.simulation as sim
        from byzbench import executors
        from byzbench.config import grid_from_dict
        seen = []
        real = sim.run_cell
        def spy(config, device=None):
            seen.append(sorted(m for m in ('sklearn.cluster', 'dp_accounting')
                               if m in sys.modules))
            return real(config, device)
        sim.run_cell = api._run_cell = spy
        cell = grid_from_dict(%r).cells[0]
        if %r == 'api':
            result = api.run_cell(cell.config)
        else:
            result, tb, _ = executors.execute_cell(cell)
        print(result.status, seen)
    """) % ({"name": "one", "grid": {"defense": ["flame"], "malicious_fraction": [0.2]},
             "base": {**TINY_BASE,
                      "privacy": {"dp": {"mode": "central", "clip": 1.0, "sigma": 1.0}}}},
            entry)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "done [['dp_accounting', 'sklearn.cluster']]"

def test_a_cell_whose_defense_cannot_be_built_still_reports_its_own_error():
    from byzbench.config import ComponentSpec
    from byzbench.executors import execute_cell

    cell = _cell("fedavg")  # then a spec that no longer builds (grids are checked earlier)
    bad = cell.config.model_copy(update={"defense": ComponentSpec(name="no_such_module:D")})
    result, tb, _ = execute_cell(cell.model_copy(update={"config": bad}))
    assert result.status == "failed" and "no_such_module" in result.error


PLUGIN = '''
import torch
from byzbench.defenses.base import Defense, Verdict


class ExplodingDefense(Defense):
    """Fails in round 1 of seed 1 (a user's buggy defense)."""

    def aggregate(self, updates, ctx):
        if ctx.round == 1 and self.cell.seed == 1:
            raise RuntimeError("boom in round 1")
        w = torch.full((updates.shape[0],), 1.0 / updates.shape[0])
        return Verdict(aggregate=w @ updates, weights=w, flagged=None)
'''


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_cell_does_not_stop_the_grid(tmp_path: Path, monkeypatch, workers):
    (tmp_path / "userplugin_fail.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    grid_file = write_grid(tmp_path / "g.yaml", {
        "name": "fails", "base": TINY_BASE,
        "grid": {"defense": ["userplugin_fail:ExplodingDefense"], "seed": [0, 1, 2]}})
    out = tmp_path / "res"
    summary = run_grid(load_grid(grid_file), out, workers=workers)
    assert summary.done == 2 and len(summary.failed) == 1
    cell, error = summary.failed[0]
    assert cell.config.seed == 1 and "boom in round 1" in error
    with ResultsStore.open(out) as store:
        rows = {r["seed"]: r for r in store.cell_rows()}
    assert rows[1]["status"] == "failed" and "RuntimeError: boom" in rows[1]["error"]
    assert "Traceback" in rows[1]["traceback"]
    assert rows[0]["status"] == rows[2]["status"] == "done"
    # the CLI exits 1 and names the failing cell; the failed cell is retried next time
    result = runner.invoke(app, ["run", str(grid_file), "-o", str(out), "-w", "1", "-q"])
    assert result.exit_code == 1
    assert "boom in round 1" in result.output


def test_ctrl_c_keeps_finished_cells_and_the_next_run_resumes(tmp_path: Path):
    grid_file = write_grid(tmp_path / "slow.yaml", {
        "name": "slow", "base": {**TINY_BASE, "rounds": 15},
        "grid": {"seed": list(range(40))}})
    out = tmp_path / "res"
    db = out / "results.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "byzbench", "run", str(grid_file), "-o",
                             str(out), "-w", "1", "-q"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=default_sigint)
    done = wait_for_cells(db, 2, 60)
    assert done >= 2, "no cell finished in time"
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "Traceback" not in output
    with ResultsStore.open(out) as store:
        kept = store.finished_ids()
    assert 2 <= len(kept) < 40
    summary = run_grid(load_grid(grid_file), out, workers=1)
    assert summary.reused == len(kept) and summary.done == 40 - len(kept)


def test_cli_version_list_and_dry_run(tiny_grid: Path):
    assert runner.invoke(app, ["--version"]).output.startswith("byzbench ")
    listing = runner.invoke(app, ["list"])
    assert listing.exit_code == 0
    for word in ("datasets", "models", "attacks", "defenses", "digits", "fedavg", "weighting"):
        assert word in listing.output
    assert runner.invoke(app, ["list", "nope"]).exit_code == 2
    bogus = runner.invoke(app, ["list", "bogus"])  # the name as typed, not 'bogu'
    assert bogus.exit_code == 2 and "unknown kind 'bogus'" in bogus.output
    assert runner.invoke(app, ["list", "attacks"]).exit_code == 0
    dry = runner.invoke(app, ["run", str(tiny_grid), "--dry-run"])
    assert dry.exit_code == 0 and "4 cells" in dry.output


def test_cli_bad_grid_is_one_clear_line_exit_2(tmp_path: Path):
    bad = write_grid(tmp_path / "bad.yaml", {"name": "bad", "grid": {"defense": ["fedavgg"]}})
    result = runner.invoke(app, ["run", str(bad)])
    assert result.exit_code == 2
    assert "unknown defense 'fedavgg' at grid.defense[0]" in result.output
    assert "did you mean 'fedavg'" in result.output
    assert "Traceback" not in result.output
    missing = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_cli_run_end_to_end(tiny_grid: Path, tmp_path: Path):
    out = tmp_path / "res"
    result = runner.invoke(app, ["run", str(tiny_grid), "-o", str(out), "-w", "1"])
    assert result.exit_code == 0, result.output
    assert "run summary" in result.output
    cells = bb.load_results(out).cells
    assert len(cells) == 4 and (cells["status"] == "done").all()


def test_store_open_errors(tmp_path: Path):
    with pytest.raises(StoreError, match="no results database"):
        ResultsStore.open(tmp_path)
    (tmp_path / "results.db").write_bytes(b"")
    with pytest.raises(StoreError, match="not a byzbench results database"):
        ResultsStore.open(tmp_path)


def test_python_api_runs_a_grid_by_path(tiny_grid: Path, tmp_path: Path):
    summary = bb.run(tiny_grid, tmp_path / "api", workers=1)
    assert summary.ok and summary.done == 4
    text = textwrap.dedent(bb.__doc__ or "")
    assert "load_results" in text


def test_missing_dataset_files_fail_before_any_cell_and_keep_results(tmp_path: Path):
    out = tmp_path / "res"
    ok = write_grid(tmp_path / "ok.yaml", {"name": "shared", "base": TINY_BASE})
    assert runner.invoke(app, ["run", str(ok), "-o", str(out), "-q"]).exit_code == 0
    grid_file = write_grid(tmp_path / "mnist.yaml", {
        "name": "shared",
        "base": {**TINY_BASE, "dataset": {"name": "mnist", "root": str(tmp_path / "nodata"),
                                          "download": False}}})
    result = runner.invoke(app, ["run", str(grid_file), "-o", str(out), "-q"])
    assert result.exit_code == 2
    assert "mnist.yaml" in result.output and "train-images-idx3-ubyte" in result.output
    assert "byzbench[vision]" in result.output and "Traceback" not in result.output
    assert len(bb.load_results(out).cells) == 1  # the earlier result is still there


def test_a_defense_that_cannot_run_skips_its_cell_and_strict_refuses_the_grid(tmp_path):
    grid_file = write_grid(tmp_path / "krum.yaml", {
        "name": "krum", "base": {**TINY_BASE, "clients": 6},
        "grid": {"defense": ["krum", "fedavg"], "malicious_fraction": [0.4]}})
    out = tmp_path / "res"
    strict = runner.invoke(app, ["run", str(grid_file), "-o", str(out), "--strict", "-q"])
    assert strict.exit_code == 2
    assert "--strict" in strict.output and "krum needs n > 2f + 2" in strict.output
    assert not (out / "results.db").exists()  # refused before any cell ran
    result = runner.invoke(app, ["run", str(grid_file), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    with ResultsStore.open(out) as store:
        rows = {r["defense"]: r for r in store.cell_rows()}
    assert rows["krum"]["status"] == "skipped" and "n > 2f + 2" in rows["krum"]["error"]
    assert rows["fedavg"]["status"] == "done"


def test_a_results_path_that_is_a_file_is_a_clear_error(tiny_grid: Path, tmp_path: Path):
    blocker = tmp_path / "taken"
    blocker.write_text("not a directory")
    result = runner.invoke(app, ["run", str(tiny_grid), "-o", str(blocker), "-q"])
    assert result.exit_code == 2
    assert "cannot create results directory" in result.output and str(blocker) in result.output
    assert "Traceback" not in result.output


def test_redirected_output_gets_plain_progress_lines_at_a_bounded_rate(tiny_grid: Path,
                                                                       tmp_path: Path,
                                                                       monkeypatch):
    """CI logs see progress as plain lines (no live bar): one per interval and one at the
    end; with a long interval only the final line appears."""
    import byzbench.cli as cli

    monkeypatch.setattr(cli, "PLAIN_PROGRESS_SECONDS", 3600.0)
    out = runner.invoke(app, ["run", str(tiny_grid), "-o", str(tmp_path / "a"), "-w", "1"])
    assert out.exit_code == 0
    progress = [line for line in out.output.splitlines() if " cells (" in line]
    assert progress == [progress[-1]] and "4/4 cells (4 done, 0 skipped, 0 failed" in \
        progress[-1]
    monkeypatch.setattr(cli, "PLAIN_PROGRESS_SECONDS", 0.0)
    out = runner.invoke(app, ["run", str(tiny_grid), "-o", str(tmp_path / "b"), "-w", "1"])
    progress = [line for line in out.output.splitlines() if " cells (" in line]
    assert len(progress) == 4 and "1/4 cells" in progress[0]
    quiet = runner.invoke(app, ["run", str(tiny_grid), "-o", str(tmp_path / "c"), "-q"])
    assert not [line for line in quiet.output.splitlines() if " cells (" in line]


def test_report_and_check_print_whole_tables_when_not_on_a_terminal(tmp_path: Path):
    """In a CI log (output not a terminal) tables are printed whole, as plain markdown:
    no table split into parts at 80 columns, no truncated column in check's table."""
    grid = write_grid(tmp_path / "g.yaml", {"name": "g", "base": TINY_BASE, "grid": {
        "attack": ["none", "sign_flip"], "defense": ["fedavg", "median"],
        "malicious_fraction": [0.2]}})
    out = tmp_path / "res"
    assert runner.invoke(app, ["run", str(grid), "-o", str(out), "-q"]).exit_code == 0
    report = runner.invoke(app, ["report", str(out), "-f", "table"])
    assert report.exit_code == 0
    assert "(part 1 of" not in report.output
    assert any(line.startswith("| rank | defense |") for line in report.output.splitlines())
    assert runner.invoke(app, ["baseline", str(out), "-o", str(tmp_path / "b.json")]
                         ).exit_code == 0
    check = runner.invoke(app, ["check", str(out), "--baseline", str(tmp_path / "b.json")])
    assert check.exit_code == 0, check.output
    rows = [line for line in check.output.splitlines() if line.startswith("| attack=")]
    assert rows and all("…" not in row and row.rstrip().endswith("|") for row in rows)
    assert all("malicious_fraction=" in row and "seed=" in row for row in rows)
