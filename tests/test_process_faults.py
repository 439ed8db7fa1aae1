"""Process faults (issue 15): a worker killed mid-cell costs only its cell, SIGTERM ends a
run like Ctrl-C (message, exit 143, workers ended), and no worker outlives a run whose main
process was killed with SIGKILL. After each fault, a re-run completes the grid with no
duplicate and no missing cell.

The fixture attack lives in a real module file (workers are forked from a forkserver and
import it by name; its settings are its parameters, since a forkserver started earlier
keeps the environment of its start): it records its worker's pid, can sleep, and can
kill its own worker.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import TINY_BASE, default_sigint, wait_for_cells, write_grid

from byzbench.config import load_grid
from byzbench.runner import WORKER_DIED, run_grid

REPO = Path(__file__).resolve().parents[1]

FIXTURE = textwrap.dedent('''
    """Test fixture: an attack that records its worker, sleeps, or kills its worker."""
    import os
    import signal
    import time
    from pathlib import Path
    from typing import ClassVar

    from byzbench.attacks.base import Attack, AttackParams, AttackSetup

    class FaultyParams(AttackParams):
        root: str
        sleep: float = 0.0
        kill_seed: int = -1
        kill_always: bool = False

    class Faulty(Attack):
        """Sign flip whose setup records the worker's pid, then sleeps or kills it."""

        paper: ClassVar[str] = "none (a test fixture)"
        Params: ClassVar[type[FaultyParams]] = FaultyParams

        def setup(self, setup: AttackSetup) -> None:
            super().setup(setup)
            p = self.params
            root = Path(p.root)
            (root / f"pid-{os.getpid()}").touch()
            time.sleep(p.sleep)
            if setup.seed == p.kill_seed:
                once = root / f"killed-{setup.seed}"
                if p.kill_always or not once.exists():
                    once.touch()
                    os.kill(os.getpid(), signal.SIGKILL)

        def poison_updates(self, updates, ctx):
            return -updates
''')


@pytest.fixture
def faulty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "fault_fixture.py").write_text(FIXTURE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _grid(tmp_path: Path, seeds: int, **fault) -> Path:
    attack = {"name": "fault_fixture:Faulty", "root": str(tmp_path), **fault}
    return write_grid(tmp_path / "faults.yaml", {
        "name": "faults", "base": {**TINY_BASE, "malicious_fraction": 0.2,
                                   "attack": attack, "defense": "median"},
        "grid": {"seed": list(range(seeds))}})


def _cells(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT cell_id, status FROM cells").fetchall()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def _workers(root: Path) -> set[int]:
    return {int(p.name.removeprefix("pid-")) for p in root.glob("pid-*")}


def _gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.time() + timeout
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return {p for p in pids if _alive(p)}


def test_a_killed_worker_costs_only_its_cell(faulty: Path):
    grid = load_grid(_grid(faulty, 5, kill_seed=1, kill_always=True))
    summary = run_grid(grid, faulty / "res", workers=2)
    assert summary.done == 4 and len(summary.failed) == 1
    cell, error = summary.failed[0]
    assert cell.config.seed == 1 and error == WORKER_DIED
    rows = _cells(faulty / "res" / "results.db")
    assert len(rows) == 5 and len({cid for cid, _ in rows}) == 5


def test_a_worker_killed_once_is_retried_and_its_cell_completes(faulty: Path):
    grid = load_grid(_grid(faulty, 4, kill_seed=2))
    summary = run_grid(grid, faulty / "res", workers=2)
    assert (faulty / "killed-2").exists()  # it did die once
    assert summary.ok and summary.done == 4


def _start(grid_file: Path, out: Path, faulty: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(faulty), str(REPO),
                                          os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "byzbench", "run", str(grid_file), "-o",
                             str(out), "-w", "2", "-q"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=default_sigint)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_sigterm_or_sigkill_of_the_run_leaves_no_worker_and_nothing_lost(
        faulty: Path, sig: signal.Signals):
    grid_file = _grid(faulty, 10, sleep=0.7)
    out = faulty / "res"
    proc = _start(grid_file, out, faulty)
    assert wait_for_cells(out / "results.db", 2, 90, proc) >= 2, "no cell finished in time"
    workers = _workers(faulty)
    assert workers and os.getpid() not in workers
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, output
        assert "terminated (SIGTERM)" in output and "Traceback" not in output
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not _gone(workers, timeout=15), "workers outlived the run"
    kept = _cells(out / "results.db")
    assert 2 <= len(kept) < 10
    summary = run_grid(load_grid(grid_file), out, workers=1)
    assert summary.ok and summary.reused == len(kept) and summary.done == 10 - len(kept)
    rows = _cells(out / "results.db")
    assert len(rows) == 10 and len({cid for cid, _ in rows}) == 10


# -- a full disk ----------------------------------------------------------------------------

def _no_space(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_a_run_is_one_line_and_keeps_the_cells_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The disk fills after two cells: exit 2 with one line, the two cells kept whole, and
    a re-run (disk freed) completes the grid with no duplicate."""
    import sqlite3 as sqlite

    from typer.testing import CliRunner

    from byzbench.cli import app
    from byzbench.store import ResultsStore

    grid_file = write_grid(tmp_path / "g.yaml", {"name": "g", "base": TINY_BASE,
                                                  "grid": {"seed": [0, 1, 2, 3]}})
    original, calls = ResultsStore.record, []

    class FullDisk:
        """The store's connection once the disk is full: every write fails."""

        def __init__(self, conn):
            self.conn = conn

        def __enter__(self):
            return self.conn.__enter__()

        def __exit__(self, *exc):
            return self.conn.__exit__(*exc)

        def execute(self, *args):
            raise sqlite.OperationalError("database or disk is full")

        executemany = execute

    def record(self, *args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:
            return original(self, *args, **kwargs)
        conn, self.conn = self.conn, FullDisk(self.conn)
        try:
            return original(self, *args, **kwargs)
        finally:
            self.conn = conn

    monkeypatch.setattr(ResultsStore, "record", record)
    out = CliRunner().invoke(app, ["run", str(grid_file), "-o", str(tmp_path / "res"), "-w",
                                   "1", "-q"])
    assert out.exit_code == 2, out.output
    assert "database or disk is full" in out.output and "Traceback" not in out.output
    assert "stored before it are kept" in out.output
    assert len(_cells(tmp_path / "res" / "results.db")) == 2
    monkeypatch.setattr(ResultsStore, "record", original)
    summary = run_grid(load_grid(grid_file), tmp_path / "res", workers=1)
    assert summary.reused == 2 and summary.done == 2
    rows = _cells(tmp_path / "res" / "results.db")
    assert len(rows) == 4 and len({cid for cid, _ in rows}) == 4


def test_a_report_on_a_full_disk_leaves_no_truncated_file(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    """A PNG that cannot be written completely is not left behind half-written, and the
    report says so in one line (exit 2)."""
    from matplotlib.figure import Figure
    from typer.testing import CliRunner

    from byzbench.cli import app

    grid_file = write_grid(tmp_path / "g.yaml", {"name": "g", "base": TINY_BASE,
                                                  "grid": {"attack": ["none", "sign_flip"]}})
    run_grid(load_grid(grid_file), tmp_path / "res", workers=1)
    real_savefig = Figure.savefig

    def half_then_full(self, fname, *args, **kwargs):
        real_savefig(self, fname, *args, **kwargs)
        with open(fname, "r+b") as handle:  # what a disk filling mid-write leaves
            handle.truncate(100)
        _no_space()

    monkeypatch.setattr(Figure, "savefig", half_then_full)
    out = CliRunner().invoke(app, ["report", str(tmp_path / "res"), "-o",
                                   str(tmp_path / "rep"), "-f", "md"])
    assert out.exit_code == 2, out.output
    assert "No space left on device" in out.output and "Traceback" not in out.output
    left = [p.name for p in (tmp_path / "rep").iterdir()] if (tmp_path / "rep").exists() else []
    assert not [name for name in left if name.endswith(".png") or name.endswith(".tmp")]
