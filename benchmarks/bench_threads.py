"""torch threads per cell: 1 against 2, side by side, on a quiet and on a loaded machine.

    python benchmarks/bench_threads.py [--repeats 3] [--load 2] [--cnn-clients 20]
                                       [--skip-grid] [--skip-cnn]

Each comparison alternates the two thread counts ``--repeats`` times and prints medians:

(a) a 36-cell grid (``benchmarks/grids/threads36.yaml``: digits, MLP [64], 20 clients,
    30 rounds) as a whole ``byzbench run -w 1 -t T`` command in a fresh interpreter;
(b) one reference cell (bench_engine's: digits, MLP [64], 20 clients, 30 rounds) in this
    process, ``torch.set_num_threads(T)``;
(c) one round of a Fashion-MNIST cell with the papers' CNN (``{name: cnn, channels: [30,
    50], hidden: 100, padding: 0}``, ``--cnn-clients`` clients, 5 local steps of batch 32)
    — the large-model case where a second thread can pay.

Every comparison runs twice: as the machine is, then with ``--load`` busy-looping processes
competing for the cores (started and ended by this script), the situation of a worker pool
(``-w 2`` on 2 cores) or of a machine shared with other jobs. The load average is printed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_engine import REFERENCE_CELL
from bench_grid import run_once

from byzbench.config import CellConfig, ComponentSpec
from byzbench.engine.simulation import Simulation, run_cell

ROOT = Path(__file__).resolve().parent.parent
GRID36 = ROOT / "benchmarks" / "grids" / "threads36.yaml"
FASHION = "/usr/share/datasets/fashion-mnist"


def _spin() -> None:
    while True:
        pass


class Load:
    """``n`` busy-looping processes for the duration of a ``with`` block."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.procs: list[multiprocessing.Process] = []

    def __enter__(self) -> Load:
        ctx = multiprocessing.get_context("fork")
        self.procs = [ctx.Process(target=_spin, daemon=True) for _ in range(self.n)]
        for p in self.procs:
            p.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join()


def side_by_side(fns: dict[int, Callable[[], float]], repeats: int) -> dict[int, float]:
    """Median seconds of each thread count's function, the counts alternated per repeat."""
    times: dict[int, list[float]] = {t: [] for t in fns}
    for _ in range(repeats):
        for threads, fn in fns.items():
            times[threads].append(fn())
    return {t: statistics.median(v) for t, v in times.items()}


def in_threads(threads: int, fn: Callable[[], object]) -> Callable[[], float]:
    def timed() -> float:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        finally:
            torch.set_num_threads(previous)
    return timed


def cnn_round(clients: int) -> Callable[[], object]:
    cell = CellConfig(
        dataset=ComponentSpec(name="fashion_mnist", params={"root": FASHION}),
        model=ComponentSpec(name="cnn", params={"channels": [30, 50], "hidden": 100,
                                                "padding": 0}),
        clients=clients, rounds=1, eval_every=1000,
        local={"steps": 5, "batch_size": 32, "lr": 0.05},
        defense=ComponentSpec(name="fedavg"), attack=ComponentSpec(name="none"))
    sim = Simulation(cell)
    return lambda: sim._train(sim.data.index, sim.data.counts, sim.data.x, sim.data.y, 0)


def report(title: str, medians: dict[int, float]) -> None:
    one, two = medians[1], medians[2]
    print(f"  {title:<44} 1 thread {one:8.3f} s   2 threads {two:8.3f} s   "
          f"2t/1t {two / one:5.2f}×", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load", type=int, default=2, help="busy processes in the loaded "
                                                           "half (0: skip it)")
    parser.add_argument("--cnn-clients", type=int, default=20)
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument("--skip-cnn", action="store_true")
    args = parser.parse_args()

    run_cell(REFERENCE_CELL)  # loads the data, warms torch up
    cnn = None if args.skip_cnn else cnn_round(args.cnn_clients)
    fns: list[tuple[str, dict[int, Callable[[], float]]]] = []
    if not args.skip_grid:
        fns.append(("(a) 36-cell grid, byzbench run -w 1 -t T",
                    {t: (lambda t=t: run_once(ROOT, GRID36, 1, t)["wall"]) for t in (1, 2)}))
    fns.append(("(b) reference cell (digits MLP [64])",
                {t: in_threads(t, lambda: run_cell(REFERENCE_CELL)) for t in (1, 2)}))
    if cnn is not None:
        fns.append((f"(c) CNN round, Fashion-MNIST, {args.cnn_clients} clients",
                    {t: in_threads(t, cnn) for t in (1, 2)}))

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, medians of {args.repeats}")
    for loaded in ([0, args.load] if args.load else [0]):
        print(f"\n{'with ' + str(loaded) + ' busy processes' if loaded else 'as the machine is'}"
              f" (load average {os.getloadavg()[0]:.2f})")
        with Load(loaded):
            for title, pair in fns:
                report(title, side_by_side(pair, args.repeats))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
