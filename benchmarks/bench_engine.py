"""Engine speed: vectorized vs per-client local training, and one reference cell.

    python benchmarks/bench_engine.py [--threads 1] [--repeats 5]

(a) local training of one round on the digits MLP [64] (5 steps, batch 32, lr 0.1) for
    20 and 100 clients: the vectorized path against the per-client reference path
    (torch.nn modules + torch.optim.SGD, one client after another), same batches, measured
    side by side in this process; the ratio is the speedup.
(b) wall time of the reference cell (digits, mlp [64], 20 clients, 30 rounds, 5 local
    steps, batch 32, lr 0.1, FedAvg, no attack, eval every 5 rounds), excluding
    interpreter start and imports: the first run in the process (loads the dataset) and
    the median of the warm runs. Single thread by default, as ByzFL's figure (2.3 s).
(c) peak memory (max RSS) of the process, and its RSS before the cell.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _memory import peak_rss_mib, rss_mib

from byzbench.config import CellConfig, ComponentSpec
from byzbench.engine.simulation import run_cell
from byzbench.engine.training import plan_batches, train_reference, train_vectorized
from byzbench.models import BatchedMLP
from byzbench.registry import DATASETS


def time_it(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_training(clients: int, repeats: int) -> tuple[float, float]:
    ds = DATASETS.get("digits")().load()
    model = BatchedMLP(64, [64], 10)
    gen = torch.Generator().manual_seed(0)
    theta = model.init(gen)
    n = len(ds.y_train)
    perm = torch.randperm(n, generator=gen)
    parts = perm.tensor_split(clients)
    counts = torch.tensor([len(p) for p in parts])
    index = torch.zeros(clients, int(counts.max()), dtype=torch.long)
    for i, p in enumerate(parts):
        index[i, :len(p)] = p
    plan = plan_batches(index, counts, 32, 5, None, gen)
    vec = time_it(lambda: train_vectorized(model, theta, ds.x_train, ds.y_train, plan, 0.1),
                  repeats)
    ref = time_it(lambda: train_reference(model, theta, ds.x_train, ds.y_train, plan, 0.1),
                  repeats)
    return vec, ref


REFERENCE_CELL = CellConfig(
    dataset=ComponentSpec(name="digits", params={"normalize": True, "test_fraction": 0.25,
                                                 "split_seed": 0}),
    model=ComponentSpec(name="mlp", params={"hidden": [64]}),
    clients=20, rounds=30, eval_every=5,
    local={"steps": 5, "batch_size": 32, "lr": 0.1},
    defense=ComponentSpec(name="fedavg", params={}), attack=ComponentSpec(name="none"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")

    rss_before = rss_mib()
    start = time.perf_counter()
    first = run_cell(REFERENCE_CELL)
    cold = time.perf_counter() - start
    warm = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = run_cell(REFERENCE_CELL)
        warm.append(time.perf_counter() - start)
    peak = peak_rss_mib()

    print("(a) one round of local training, digits MLP [64], 5 steps × batch 32")
    print(f"{'clients':>8} {'vectorized ms':>14} {'per-client ms':>14} {'speedup':>8}")
    for clients in (20, 100):
        vec, ref = bench_training(clients, args.repeats)
        print(f"{clients:>8} {vec * 1e3:>14.2f} {ref * 1e3:>14.2f} {ref / vec:>7.1f}×")

    print("\n(b) reference cell: digits, mlp [64], 20 clients, 30 rounds, 5 steps, batch 32,"
          " lr 0.1, FedAvg, no attack, eval every 5")
    print(f"    first run in process (loads data): {cold:.3f} s")
    print(f"    warm runs, median of {args.repeats}: {statistics.median(warm):.3f} s "
          f"(min {min(warm):.3f} s)   [must ≤ 1.0 s, target ≤ 0.25 s; ByzFL 2.3 s]")
    print(f"    final accuracy: {result.summary['accuracy']:.4f} "
          f"(first run {first.summary['accuracy']:.4f}: identical = reproducible)")
    print(f"\n(c) peak RSS of the process: {peak:.0f} MiB (RSS before the cell, after "
          f"imports: {rss_before:.0f} MiB)")


if __name__ == "__main__":
    main()
