"""Whole-grid wall time: ``byzbench run`` on a grid file into a temporary directory.

    python benchmarks/bench_grid.py [GRID ...] [-w 2] [-t 1] [--repeats 1]
                                    [--tree NAME=PATH ...] [--top 8] [--slowest K] [--keep DIR]

Each run is the whole command (``python -m byzbench run GRID -o TMP -w W [-t T] -q`` in a
fresh interpreter: start-up, imports, pool, every cell, every store write), timed from
outside. GRID defaults to ``benchmarks/grids/issue16_grid.yaml`` (the main grid as issue 16
found it, 1,080 cells); pass ``configs/grid.yaml`` for today's. ``--tree NAME=PATH`` runs
the byzbench found at PATH (a checkout, e.g. ``git worktree add /tmp/before <commit>``)
under that name; several trees are run alternately, ``--repeats`` times each, and the
median of each is printed side by side, so a before/after comparison shares the machine's
load, with the ratio within each alternation (the steadier figure when the host's speed
drifts between runs). The load average (``os.getloadavg``) is printed before and after:
on a shared machine the figures are pessimistic.

Per run it prints wall time, cells/s, and from the run's SQLite store where the time went:
Σ cell wall_s (the cells' own time, as ``run_cell`` measures it), the part of workers ×
wall not inside any cell (process start, imports, pool, dataset loads, store writes,
scheduling), Σ aggregation time, and the ``--top`` defenses and attacks by summed cell time.
``--slowest K`` prints, from each tree's last run, the K cells slowest against
their defense's median cell time (a cell far above it paid for something besides its own
work, such as an import). ``--keep DIR`` keeps each tree's last results under ``DIR/NAME`` (otherwise a temporary
directory), so ``benchmarks/compare_results.py DIR/before DIR/after`` can show, from the same
runs, that the numbers did not move.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GRID = ROOT / "benchmarks" / "grids" / "issue16_grid.yaml"


def run_once(tree: Path, grid: Path, workers: int, threads: int | None,
             keep: Path | None = None) -> dict:
    """One whole ``byzbench run`` of ``grid`` with the byzbench of ``tree``; its figures.
    ``keep``: write the results there (replacing what it holds) instead of a temporary
    directory."""
    with tempfile.TemporaryDirectory(prefix="bench_grid_") as tmp:
        out = Path(tmp) / "results"
        if keep is not None:
            shutil.rmtree(keep, ignore_errors=True)
            out = keep
        cmd = [sys.executable, "-m", "byzbench", "run", str(grid), "-o", str(out),
               "-w", str(workers), "-q"]
        if threads is not None:
            cmd += ["-t", str(threads)]
        env = dict(os.environ, PYTHONPATH=str(tree))
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode not in (0, 1):  # 1: some cell failed (stored), still a full run
            raise SystemExit(f"{' '.join(cmd)} (in {tree}) exited {proc.returncode}:\n"
                             f"{proc.stderr[-2000:]}")
        with sqlite3.connect(out / "results.db") as db:
            cells, cell_s, first, last = db.execute(
                "SELECT COUNT(*), SUM(wall_s), MIN(started), MAX(finished) FROM cells"
            ).fetchone()
            agg_ms = db.execute("SELECT SUM(agg_ms) FROM rounds").fetchone()[0] or 0.0
            by_defense = db.execute("SELECT defense, SUM(wall_s) FROM cells GROUP BY defense "
                                    "ORDER BY 2 DESC").fetchall()
            by_attack = db.execute("SELECT attack, SUM(wall_s) FROM cells GROUP BY attack "
                                   "ORDER BY 2 DESC").fetchall()
            each = db.execute("SELECT defense, attack, malicious_fraction, seed, wall_s "
                              "FROM cells WHERE wall_s IS NOT NULL").fetchall()
    return {"wall": wall, "cells": cells, "cell_s": cell_s or 0.0, "agg_s": agg_ms / 1e3,
            "span": (last - first) if first is not None else 0.0,
            "by_defense": by_defense, "by_attack": by_attack, "slowest": slowest(each)}


def slowest(cells: list[tuple]) -> list[tuple[float, tuple, float]]:
    """Each cell as (its time / its defense's median cell time, the cell's row, that
    median), slowest relative to its defense first: a cell far above its defense's median
    paid for something other than its own work (an import, a page-in)."""
    by_defense: dict[str, list[float]] = {}
    for row in cells:
        by_defense.setdefault(row[0], []).append(row[4])
    medians = {d: statistics.median(w) for d, w in by_defense.items()}
    ranked = [(row[4] / medians[row[0]], row, medians[row[0]]) for row in cells
              if medians[row[0]] > 0]
    return sorted(ranked, key=lambda item: item[0], reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grids", nargs="*", type=Path, default=[DEFAULT_GRID])
    parser.add_argument("-w", "--workers", type=int, default=2)
    parser.add_argument("-t", "--threads", type=int, default=None,
                        help="torch threads per worker (default: byzbench's own default)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                        help="a byzbench checkout to run (default: this one)")
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--slowest", type=int, default=0, metavar="K",
                        help="print each tree's K cells slowest against their defense's "
                             "median cell (last run)")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep each tree's last results in DIR/NAME")
    args = parser.parse_args()
    trees = [(name, Path(path).resolve()) for name, path in
             (t.split("=", 1) for t in args.tree)] or [("this", ROOT)]

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} CPUs; -w {args.workers}"
          f"{'' if args.threads is None else f' -t {args.threads}'}")
    for grid in args.grids:
        grid = grid.resolve()
        results: dict[str, list[dict]] = {name: [] for name, _ in trees}
        for rep in range(args.repeats):
            for name, tree in trees:  # alternated, so every tree sees the same load
                keep = None if args.keep is None else (
                    args.keep.resolve() / (name if len(args.grids) == 1
                                           else f"{name}-{grid.stem}"))
                res = run_once(tree, grid, args.workers, args.threads, keep)
                results[name].append(res)
                print(f"  [{grid.name} · {name} · run {rep + 1}] {res['wall']:.1f} s, "
                      f"{res['cells']} cells, load {os.getloadavg()[0]:.2f}", flush=True)
        print(f"\n{grid.name}: medians of {args.repeats} run(s)")
        print(f"{'tree':>10} {'wall s':>8} {'cells/s':>8} {'Σcell s':>8} {'outside':>8} "
              f"{'Σagg s':>7}")
        walls = {}
        for name, runs in results.items():
            wall = statistics.median(r["wall"] for r in runs)
            cell_s = statistics.median(r["cell_s"] for r in runs)
            agg = statistics.median(r["agg_s"] for r in runs)
            cells = runs[0]["cells"]
            walls[name] = wall
            print(f"{name:>10} {wall:>8.1f} {cells / wall:>8.1f} {cell_s:>8.1f} "
                  f"{args.workers * wall - cell_s:>8.1f} {agg:>7.1f}")
        if len(walls) > 1:
            first = next(iter(walls))
            for name, wall in walls.items():
                if name != first:
                    # the host's speed drifts between runs: the ratio within each
                    # alternation (the two trees run back to back) is the steadier figure
                    paired = [a["wall"] / b["wall"]
                              for a, b in zip(results[first], results[name])]
                    print(f"  {first} / {name}: {walls[first] / wall:.2f}× (per alternation: "
                          f"{', '.join(f'{x:.2f}×' for x in paired)}; median "
                          f"{statistics.median(paired):.2f}×)")
        for name, runs in results.items():
            last = runs[-1]
            print(f"\n  {name}: summed cell time by defense (s):  " + ", ".join(
                f"{d} {s:.1f}" for d, s in last["by_defense"][:args.top]))
            print(f"  {name}: summed cell time by attack (s):   " + ", ".join(
                f"{a} {s:.1f}" for a, s in last["by_attack"][:args.top]))
            for ratio, (defense, attack, fraction, seed, wall), median in \
                    last["slowest"][:args.slowest]:
                print(f"    {name}: {defense} · {attack} · {fraction} · seed {seed}: "
                      f"{wall:.3f} s, {ratio:.1f}× its defense's median {median:.3f} s")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
