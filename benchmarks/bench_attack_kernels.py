"""Attack kernels (issue 16): the fast kernels against the ones they replaced, timed side by
side in one run (interleaved repeats, medians, one torch thread).

    python benchmarks/bench_attack_kernels.py [--repeats 5] [--search-repeats 3] [--all-directions]
    python benchmarks/bench_attack_kernels.py --only cells --repeats 9

(1) column standard deviation at [16, 4810] (the digits MLP's d, 16 honest rows):
    torch.std(dim=0) against byzbench's two-pass column_std; values must agree to 1e-6.
(2) one min-max / min-sum round at k = 80 honest rows, d = 79,510 (a 100-client
    Fashion-MNIST MLP round at 20% malicious): the direct γ search (every step recomputes
    the [k, d] distances, threshold from torch.cdist; tests/reference_kernels.py) against
    the cached-scalar search, both on the same setting. Prints both γ (must be identical)
    and the ratio; target ≥ 10× for the whole poison_updates call (setting included).
    Then the same at the digits shapes (k = 16, d = 4810), for information.
(3) the digits reference cell (mlp [64], 20 clients, 30 rounds, 5 steps, batch 32,
    FedAvg, 20% malicious) under ALIE against the same cell with no attack, interleaved;
    target ≤ 1.15×. "alie (before)" runs the previous kernels (torch.std, boolean-mask
    indexing, torch.where) in the same process. Also the time spent inside the attack's
    poison_updates, per round.
(4) the same cell under each other update attack: time inside poison_updates per round
    (oracle calls included for the defense-aware ones) and its share of the cell.

Numbers unchanged: benchmarks/attack_kernels_grid.yaml (the changed attacks × fedavg,
median, krum) run with the code before (commit 330ec15) and after, then compared:

    git archive 330ec15 | tar -x -C /tmp/base
    (cd /tmp/base && PYTHONPATH=. python3 -m byzbench run $OLDPWD/benchmarks/attack_kernels_grid.yaml -o /tmp/old -w 2 -q)
    python3 -m byzbench run benchmarks/attack_kernels_grid.yaml -o /tmp/new -w 2 -q
    python3 benchmarks/compare_results.py /tmp/old /tmp/new
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the previous kernels, kept for the tests

from reference_kernels import (  # noqa: E402
    reference_column_std,
    reference_put_rows,
    reference_reference_rows,
    reference_search_in,
)

import byzbench.attacks._common as common  # noqa: E402
import byzbench.attacks.adaptive as adaptive  # noqa: E402
import byzbench.attacks.model as model  # noqa: E402
from byzbench.attacks.base import AttackContext  # noqa: E402
from byzbench.config import grid_from_dict  # noqa: E402
from byzbench.engine.simulation import Simulation  # noqa: E402
from byzbench.registry import ATTACKS  # noqa: E402

CELL = {"dataset": "digits", "model": {"name": "mlp", "hidden": [64]}, "partition": "iid",
        "clients": 20, "rounds": 30, "local": {"steps": 5, "batch_size": 32, "lr": 0.1},
        "eval_every": 5, "malicious_fraction": 0.2, "seed": 0, "device": "cpu",
        "defense": "fedavg"}
OTHERS = ["ipm", "sign_flip", "gaussian", "scaling", "fang_krum", "fang_trim", "alie_opt",
          "ipm_opt", "mimic", "minmax", "minsum"]


def clock() -> float:
    """CPU seconds of this process: on a shared machine, unlike wall time, they do not count
    the time other processes hold the cores (one torch thread: the work runs here)."""
    return time.process_time()


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, the repeats interleaved (one warm-up each)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = clock()
            fn()
            times[key].append(clock() - start)
    return {k: statistics.median(v) for k, v in times.items()}


@contextlib.contextmanager
def previous_kernels() -> Iterator[None]:
    """The attack modules' kernels as they were before issue 16's changes."""
    saved = []
    for module in (common, model, adaptive):
        for name, old in (("column_std", reference_column_std), ("put_rows", reference_put_rows),
                          ("reference_rows", reference_reference_rows)):
            if hasattr(module, name):
                saved.append((module, name, getattr(module, name)))
                setattr(module, name, old)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def column_std_part(repeats: int) -> None:
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(16, 4810, generator=gen) * 0.01
    fast, ref = common.column_std(rows), reference_column_std(rows)
    err = float(((fast - ref).abs() / ref.abs()).max())
    med = interleaved({"torch.std": lambda: reference_column_std(rows),
                       "column_std": lambda: common.column_std(rows)}, repeats * 40)
    print("(1) column standard deviation, [16, 4810] float32")
    print(f"    torch.std(dim=0) {med['torch.std'] * 1e6:8.1f} µs   two-pass column_std "
          f"{med['column_std'] * 1e6:8.1f} µs   ratio {med['torch.std'] / med['column_std']:.1f}×"
          f"   max relative difference {err:.1e}")


def search_part(repeats: int, directions: list[str], k: int = 80, n: int = 100,
                d: int = 79_510) -> float:
    """One round's search and poison_updates, before and after; returns the worst ratio."""
    gen = torch.Generator().manual_seed(0)
    honest = torch.randn(k, d, generator=gen) * 0.01 + torch.randn(d, generator=gen) * 0.003
    updates = torch.cat([honest, torch.zeros(n - k, d)])
    malicious = torch.zeros(n, dtype=torch.bool)
    malicious[k:] = True
    ctx = AttackContext(round=0, client_ids=torch.arange(n), malicious=malicious,
                        reference=~malicious, generator=torch.Generator().manual_seed(0),
                        defense_name="fedavg")
    print(f"\n(2) min-max / min-sum γ search, k = {k} honest rows, d = {d:,} (float32 rows)")
    print(f"    {'attack':<8} {'p':<5} {'direct ms':>10} {'cached ms':>10} {'ratio':>7}   "
          f"{'round before ms':>15} {'round after ms':>14} {'ratio':>7}   γ identical")
    worst = float("inf")
    for name in ("minmax", "minsum"):
        for kind in directions:
            cls = ATTACKS.get(name)
            attack = cls(cls.Params(perturbation=kind))
            setting = attack.setting(honest)
            gammas: dict[str, float] = {}

            def direct(attack=attack, setting=setting, gammas=gammas) -> None:
                gammas["direct"] = reference_search_in(attack, *setting, torch.float32)[1]

            def cached(attack=attack, setting=setting, gammas=gammas) -> None:
                gammas["cached"] = attack.search_in(*setting, torch.float32)[1]

            def round_before(attack=attack) -> None:
                original = attack.search_in
                attack.search_in = lambda *a: reference_search_in(attack, *a)
                try:
                    attack.poison_updates(updates.clone(), ctx)
                finally:
                    attack.search_in = original

            def round_after(attack=attack) -> None:
                attack.poison_updates(updates.clone(), ctx)

            med = interleaved({"direct": direct, "cached": cached, "before": round_before,
                               "after": round_after}, repeats)
            same = gammas["direct"] == gammas["cached"]
            ratio = med["before"] / med["after"]
            worst = min(worst, ratio)
            print(f"    {name:<8} {kind:<5} {med['direct'] * 1e3:10.1f} {med['cached'] * 1e3:10.1f} "
                  f"{med['direct'] / med['cached']:6.1f}×   {med['before'] * 1e3:15.1f} "
                  f"{med['after'] * 1e3:14.1f} {ratio:6.1f}×   {same} "
                  f"(γ = {gammas['cached']:.6g})")
    return worst


class AttackClock:
    """Wall time spent inside an attack's poison_updates over a cell."""

    def __init__(self, sim: Simulation) -> None:
        self.seconds, self.calls = 0.0, 0
        inner = sim.attack.poison_updates

        def timed(updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
            start = clock()
            out = inner(updates, ctx)
            self.seconds += clock() - start
            self.calls += 1
            return out

        sim.attack.poison_updates = timed  # type: ignore[method-assign]


def cell_config(attack: str):
    return grid_from_dict({"name": "bench", "base": {**CELL, "attack": attack}}).cells[0].config


def run_cell(config, clocks: list[AttackClock] | None = None) -> None:
    sim = Simulation(config)
    if clocks is not None:
        clocks.append(AttackClock(sim))
    sim.run()


def cells_part(repeats: int) -> bool:
    none, alie = cell_config("none"), cell_config("alie")
    clocks: dict[str, list[AttackClock]] = {"alie": [], "alie (before)": []}

    def before() -> None:
        with previous_kernels():
            run_cell(alie, clocks["alie (before)"])

    med = interleaved({"none": lambda: run_cell(none),
                       "alie": lambda: run_cell(alie, clocks["alie"]),
                       "alie (before)": before}, repeats)
    print("\n(3) digits reference cell (mlp [64], 20 clients, 30 rounds, FedAvg, 20% malicious),"
          f" median of {repeats} interleaved")
    for key in ("none", "alie (before)", "alie"):
        inside = ""
        if key in clocks:
            per_round = statistics.median(c.seconds / max(c.calls, 1) for c in clocks[key])
            inside = f"   inside poison_updates {per_round * 1e6:7.1f} µs/round"
        print(f"    {key:<14} {med[key]:7.3f} s   × none {med[key] / med['none']:.3f}{inside}")
    ok = med["alie"] / med["none"] <= 1.15
    print(f"    ALIE cell / no-attack cell {med['alie'] / med['none']:.3f} (target ≤ 1.15): "
          f"{'PASS' if ok else 'FAIL'}")
    return ok


def others_part(repeats: int) -> None:
    print("\n(4) the same cell under each update attack: time inside poison_updates "
          f"(median of {repeats})")
    print(f"    {'attack':<12} {'cell s':>7} {'µs/round':>9} {'share':>7}")
    for name in OTHERS:
        config = cell_config(name)
        cells, inside = [], []
        for _ in range(repeats):
            clocks: list[AttackClock] = []
            start = clock()
            run_cell(config, clocks)
            cells.append(clock() - start)
            inside.append(clocks[0].seconds / max(clocks[0].calls, 1))
        cell_s, per_round = statistics.median(cells), statistics.median(inside)
        share = per_round * 30 / cell_s
        print(f"    {name:<12} {cell_s:7.3f} {per_round * 1e6:9.1f} {share:6.1%}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--search-repeats", type=int, default=3)
    ap.add_argument("--all-directions", action="store_true",
                    help="(2) for every perturbation direction, not only the default std")
    ap.add_argument("--only", choices=["std", "search", "cells", "others"], default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread\n")
    ok = True
    if args.only in (None, "std"):
        column_std_part(args.repeats)
    if args.only in (None, "search"):
        directions = ["unit", "sign", "std"] if args.all_directions else ["std"]
        worst = search_part(args.search_repeats, directions)
        print(f"    worst round ratio {worst:.1f}× (target ≥ 10×): "
              f"{'PASS' if worst >= 10 else 'FAIL'}")
        ok &= worst >= 10
        worst = search_part(args.repeats, directions, k=16, n=20, d=4810)
        print(f"    worst round ratio at the digits shapes {worst:.1f}× (no target)")
    if args.only in (None, "cells"):
        ok &= cells_part(args.repeats)
    if args.only in (None, "others"):
        others_part(args.repeats)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
