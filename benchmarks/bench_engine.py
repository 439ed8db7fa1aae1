"""Engine speed: vectorized vs per-client local training, and one reference cell.

    python benchmarks/bench_engine.py [--threads 1] [--repeats 5] [--profile]
    python benchmarks/bench_engine.py --tree before=/tmp/before --tree after=. [--rounds 3]
    python benchmarks/bench_engine.py --plans [--repeats 5]
    python benchmarks/bench_engine.py --breakdown [--repeats 5]
    python benchmarks/bench_engine.py --cold [--repeats 200]
    python benchmarks/bench_engine.py --device cuda      # (a), (b), (d) on the GPU

(a) local training of one round on the digits MLP [64] (5 steps, batch 32, lr 0.1) for
    20 and 100 clients: the vectorized path against the per-client reference path
    (torch.nn modules + torch.optim.SGD, one client after another), same batches, measured
    side by side in this process; the ratio is the speedup.
(b) wall time of the reference cell (digits, mlp [64], 20 clients, 30 rounds, 5 local
    steps, batch 32, lr 0.1, FedAvg, no attack, eval every 5 rounds), excluding
    interpreter start and imports: the first run in the process (loads the dataset) and
    the median of the warm runs. Single thread by default, as ByzFL's figure (2.3 s).
(c) peak memory (max RSS) of the process, and its RSS before the cell.
(d) the reference cell against its GEMM floor (issue 16: target ≤ 1.6×): the floor is the
    time of exactly the matrix products the cell needs — per local step of every client the
    forward product of each layer, the weight-gradient product of each layer and the
    backward product into each layer below the last, and every evaluation's forward
    products — at the cell's shapes, batched over the clients as the engine batches them,
    into preallocated outputs, on this process's threads. Cell and floor alternate
    ``--repeats`` times; medians of wall time and of CPU time (steadier on a loaded
    machine). ``--profile`` adds where the cell's time goes (cProfile, cumulative per engine
    stage). ``--tree NAME=PATH`` runs only (d), for each byzbench checkout given (e.g.
    ``git worktree add /tmp/before <commit>``) in its own process, the checkouts alternated
    ``--rounds`` times: a before/after comparison on the same machine and load.
(e) ``--plans``: one round's batch plan — the sort that picks each client's batch by topk,
    numpy's argsort and the packed sort, and the whole plan against its torch definition.

(f) ``--breakdown``: where the reference cell's time goes, measured inside the cell: each
    engine stage wrapped in a timer (about a microsecond per call), µs per round, and what
    the local steps and the rest take against the GEMM floor measured in the same run.

(g) ``--cold``: why the cell sits further above its floor than its stages timed alone
    suggest: a few of the host operations every round runs — a seeded numpy generator and
    its 16 bytes (the nonce), the round's batch plan, FedAvg of the round's updates — timed
    in a loop of their own, and each right after one round of local training (which evicts
    them from the caches), alternated, medians.

``--device cuda`` runs (a), (b) and (d) with the model, data and floor on the GPU (the cell
with ``device: cuda``; every timing ends with ``torch.cuda.synchronize``); the batch plans are
still drawn on the host, as in every cell.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _memory import peak_rss_mib, rss_mib

from byzbench.config import CellConfig, ComponentSpec
from byzbench.data.base import Dataset
from byzbench.engine.simulation import Simulation, build, run_cell
from byzbench.engine.training import (
    BatchPlan,
    plan_batches,
    smallest_sorted,
    train_reference,
    train_vectorized,
)
from byzbench.models import BatchedMLP
from byzbench.registry import DATASETS

DEVICE = torch.device("cpu")


def sync() -> None:
    """Wait for the device's queued kernels, so a timing covers them."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def time_it(fn, repeats: int) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def iid_client_plan(n_train: int, clients: int, gen: torch.Generator) -> BatchPlan:
    """One round's batch plan (5 steps of batch 32) of ``clients`` iid clients sharing
    ``n_train`` samples, the split and the batches drawn from ``gen``."""
    parts = torch.randperm(n_train, generator=gen).tensor_split(clients)
    counts = torch.tensor([len(p) for p in parts])
    index = torch.zeros(clients, int(counts.max()), dtype=torch.long)
    for i, p in enumerate(parts):
        index[i, :len(p)] = p
    return plan_batches(index, counts, 32, 5, None, gen)


def reference_round(clients: int = 20) -> tuple[Dataset, BatchedMLP, torch.Tensor, BatchPlan]:
    """One round of the reference cell's local training, on the host: (the digits data, the
    MLP [64], θ, an iid batch plan of ``clients`` clients), all drawn from seed 0."""
    ds = build(DATASETS, REFERENCE_CELL.dataset).load()
    model = BatchedMLP(64, [64], 10)
    gen = torch.Generator().manual_seed(0)
    theta = model.init(gen)
    return ds, model, theta, iid_client_plan(len(ds.y_train), clients, gen)


def bench_training(clients: int, repeats: int) -> tuple[float, float]:
    ds, model, theta, plan = reference_round(clients)
    theta, plan = theta.to(DEVICE), plan.to(DEVICE)
    x, y = ds.x_train.to(DEVICE), ds.y_train.to(DEVICE)
    vec = time_it(lambda: train_vectorized(model, theta, x, y, plan, 0.1), repeats)
    ref = time_it(lambda: train_reference(model, theta, x, y, plan, 0.1), repeats)
    return vec, ref


REFERENCE_CELL = CellConfig(
    dataset=ComponentSpec(name="digits", params={"normalize": True, "test_fraction": 0.25,
                                                 "split_seed": 0}),
    model=ComponentSpec(name="mlp", params={"hidden": [64]}),
    clients=20, rounds=30, eval_every=5,
    local={"steps": 5, "batch_size": 32, "lr": 0.1},
    defense=ComponentSpec(name="fedavg", params={}), attack=ComponentSpec(name="none"),
)


def reference_cell() -> CellConfig:
    """The reference cell on this run's device."""
    return REFERENCE_CELL.model_copy(update={"device": DEVICE.type})


def bench_plans(repeats: int) -> None:
    """(e) one round's batch plan: the b smallest of fresh random keys per client and step
    by ``topk``, by numpy's ``argsort`` (the plan's previous fast path) and by the packed
    uint32 sort of :func:`~byzbench.engine.training.smallest_sorted`; then the whole plan
    (``plan_batches``) against its definition in torch (``masked_fill``, ``topk``,
    ``gather``). Each timing draws its own keys (``torch.rand`` included in every column):
    a sort on the same keys again runs faster than on fresh ones."""
    import numpy as np

    gen = torch.Generator().manual_seed(0)

    def argsort_path(keys: torch.Tensor, b: int) -> torch.Tensor | None:
        """The previous fast path: argsort, then the same tie test on the b + 1 smallest."""
        k = keys.numpy()
        idx = np.argsort(k, axis=2)[..., :b + 1]
        vals = np.take_along_axis(k, idx, axis=2)
        if ((vals[..., 1:] == vals[..., :-1]) & (vals[..., 1:] < 2.0)).any():
            return None
        return torch.from_numpy(np.ascontiguousarray(idx[..., :b], dtype=np.int64))

    def torch_plan(index: torch.Tensor, counts: torch.Tensor, b: int, steps: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        n, m = index.shape
        keys = torch.rand(steps, n, m, generator=gen)
        keys.masked_fill_((torch.arange(m) >= counts.unsqueeze(1)).unsqueeze(0), 2.0)
        order = keys.topk(b, dim=2, largest=False, sorted=True).indices
        return (torch.gather(index.unsqueeze(0).expand(steps, n, m), 2, order),
                torch.arange(b).expand(steps, n, b) < counts.view(1, n, 1))

    def candidates(n: int, m: int) -> dict[str, Callable[[], object]]:
        b = min(32, m)
        counts = torch.full((n,), m)
        counts[::3] = m - 1                       # uneven clients: padding
        index = torch.randint(0, 10_000, (n, m), generator=gen)

        def keys() -> torch.Tensor:
            return torch.rand(5, n, m, generator=gen)

        return {"topk": lambda: keys().topk(b, dim=2, largest=False, sorted=True),
                "argsort": lambda: argsort_path(keys(), b),
                "packed": lambda: smallest_sorted(keys(), b),
                "torch plan": lambda: torch_plan(index, counts, b, 5),
                "plan": lambda: plan_batches(index, counts, 32, 5, None, gen)}

    print("(e) one round's batch plan, 5 steps, fresh keys each call, medians "
          f"(x{repeats * 200} calls), µs")
    print(f"{'clients × samples':>18} {'topk':>7} {'argsort':>8} {'packed':>7} "
          f"{'plan: torch':>12} {'ours':>6}")
    for n, m in ((20, 72), (100, 15), (100, 300)):
        t = {}
        for name, fn in candidates(n, m).items():
            fn()
            runs = []
            for _ in range(repeats * 200):
                start = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - start)
            t[name] = statistics.median(runs) * 1e6
        print(f"{f'{n} × {m}':>18} {t['topk']:>7.1f} {t['argsort']:>8.1f} "
              f"{t['packed']:>7.1f} {t['torch plan']:>12.1f} {t['plan']:>6.1f}")


def gemm_floor(config: CellConfig) -> tuple[Callable[[], None], float]:
    """A function running exactly the matrix products of ``config``'s cell (an MLP cell,
    fixed batch size, every client every round) and their FLOPs."""
    sim = Simulation(config)
    widths = sim.model.widths
    n, steps = config.participants, config.local.steps
    b = min(config.local.batch_size, int(sim.data.counts.min()))
    evals = len([r for r in range(config.rounds)
                 if (r + 1) % config.eval_every == 0 or r == config.rounds - 1])
    n_test = sim.x_test.shape[0]
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g).to(DEVICE)

    fwd, bwd_w, bwd_x = [], [], []   # (args, out) of each product of one local step
    for i, (a, c) in enumerate(zip(widths[:-1], widths[1:])):
        fwd.append((rand(n, 1, c), rand(n, b, a), rand(n, c, a).transpose(1, 2),
                    torch.empty(n, b, c, device=DEVICE)))
        bwd_w.append((rand(n, c, b), rand(n, b, a), torch.empty(n, c, a, device=DEVICE)))
        if i > 0:
            bwd_x.append((rand(n, b, c), rand(n, c, a), torch.empty(n, b, a, device=DEVICE)))
    ev = [(rand(1, 1, c), rand(1, n_test, a), rand(1, c, a).transpose(1, 2),
           torch.empty(1, n_test, c, device=DEVICE)) for a, c in zip(widths[:-1], widths[1:])]
    flops_step = sum(2 * n * b * a * c for a, c in zip(widths[:-1], widths[1:]))
    flops = (config.rounds * steps * (2 * flops_step + sum(
        2 * n * b * a * c for a, c in zip(widths[1:-1], widths[2:])))
        + evals * flops_step // (n * b) * n_test)

    def run() -> None:
        for _ in range(config.rounds * steps):
            for bias, x, w, out in fwd:
                torch.baddbmm(bias, x, w, out=out)
            for x, y, out in bwd_w:
                torch.bmm(x, y, out=out)
            for x, y, out in bwd_x:
                torch.bmm(x, y, out=out)
        for _ in range(evals):
            for bias, x, w, out in ev:
                torch.baddbmm(bias, x, w, out=out)
        sync()

    return run, flops


# (f): the stages timed inside the cell, nested as listed (a stage's time includes those below
# it); (module, attribute path, label), each patched where the engine looks it up
BREAKDOWN = [("byzbench.engine.simulation", "Simulation._train", "  local training"),
             ("byzbench.engine.simulation", "plan_batches", "    batch plan"),
             ("byzbench.engine.training", "run_sgd_steps", "    local steps"),
             ("byzbench.defenses.fedavg", "FedAvg.__call__", "  defense (FedAvg)"),
             ("byzbench.engine.simulation", "evaluate_sums", "  evaluation"),
             ("byzbench.engine.simulation", "torch_generator", "seeded generators")]


def breakdown(repeats: int) -> None:
    """(f) each stage of :data:`BREAKDOWN` wrapped in a timer inside the running cell (so
    it sees the caches as the cell leaves them, unlike a stage timed alone), per round;
    the floor alternated with the cells."""
    import importlib

    totals: dict[str, float] = {}
    originals = []
    for module_name, path, label in BREAKDOWN:
        module = importlib.import_module(module_name)
        owner_name, _, attr = path.rpartition(".")
        owner = getattr(module, owner_name) if owner_name else module
        fn = getattr(owner, attr)
        originals.append((owner, attr, fn))

        def timed(*args, _fn=fn, _label=label, **kwargs):
            start = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                totals[_label] = totals.get(_label, 0.0) + time.perf_counter() - start

        setattr(owner, attr, timed)
    try:
        config = reference_cell()
        floor_fn, _ = gemm_floor(config)
        run_cell(config)
        floor_fn()
        totals.clear()
        times = alternate(config, floor_fn, repeats)
    finally:
        for owner, attr, fn in originals:
            setattr(owner, attr, fn)
    rounds = repeats * config.rounds
    floor = statistics.median(times["floor"]) / config.rounds
    per = {label.strip(): totals.get(label, 0.0) / rounds for _, _, label in BREAKDOWN}
    cell = sum(times["cell"]) / rounds
    training = per["local training"]
    rows = [("cell", cell),
            ("  local training", training),
            ("    batch plan", per["batch plan"]),
            ("    local steps", per["local steps"]),
            ("    the rest (parameter layout, labels, the plan's generator)",
             training - per["batch plan"] - per["local steps"]),
            ("  defense (FedAvg)", per["defense (FedAvg)"]),
            ("  evaluation", per["evaluation"]),
            ("  the rest (the round's other generators, bookkeeping, set-up, summary)",
             cell - training - per["defense (FedAvg)"] - per["evaluation"]),
            ("all but the local steps", cell - per["local steps"]),
            ("seeded generators, all (inside the rows above)", per["seeded generators"])]
    print(f"(f) the reference cell, stage by stage inside the cell, µs per round (mean of "
          f"{repeats} cells; GEMM floor {floor * 1e6:.0f} µs per round, median)")
    for label, t in rows:
        print(f"    {label:<72} {t * 1e6:6.0f}  {t / floor:5.2f}× floor")


STAGES = [("local training", "training.py", "train_chunked"),
          ("batch plans", "training.py", "plan_batches"),
          ("evaluation", "training.py", "evaluate_sums"),
          ("defense (FedAvg)", "defenses/base.py", "__call__"),
          ("seeded generators", "seeding.py", "torch_generator"),
          ("cell set-up", "simulation.py", "__init__")]


def profile_cell(config: CellConfig, repeats: int) -> None:
    """Where the cell's time goes: cProfile cumulative seconds of the engine's stages."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(repeats):
        run_cell(config)
    prof.disable()
    stats = pstats.Stats(prof).stats
    total = sum(v[3] for k, v in stats.items() if k[2] == "run_cell") / repeats
    ops = sum(v[1] for k, v in stats.items() if k[0] == "~") / repeats
    print(f"    profile (cProfile, per cell, inflated by the profiler): {total * 1e3:.1f} ms, "
          f"{ops:,.0f} calls into torch/C")
    for label, file, func in STAGES:
        cum = sum(v[3] for k, v in stats.items() if k[0].endswith(file) and k[2] == func)
        print(f"      {label:<20} {cum / repeats * 1e3:7.1f} ms")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_cell(config)
    top = [e for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::")]
    print(f"    torch operators called per cell (top level, torch.profiler): {len(top):,}")


def alternate(config: CellConfig, floor_fn: Callable[[], None], repeats: int
              ) -> dict[str, list[float]]:
    """The cell of ``config`` and its GEMM floor alternated ``repeats`` times, so both see
    the same load: each run's wall seconds ("cell", "floor") and this process's CPU seconds
    ("cell_cpu", "floor_cpu")."""
    times: dict[str, list[float]] = {"cell": [], "floor": [], "cell_cpu": [], "floor_cpu": []}
    for _ in range(repeats):
        for name, fn in (("cell", lambda: run_cell(config)), ("floor", floor_fn)):
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - start)
            times[name + "_cpu"].append(time.process_time() - cpu)
    return times


def cell_vs_floor(repeats: int) -> dict[str, float]:
    """(d): the reference cell and its GEMM floor alternated ``repeats`` times; medians of
    wall time and of this process's CPU time (steadier on a loaded machine)."""
    config = reference_cell()
    floor_fn, flops = gemm_floor(config)
    floor_fn()
    run_cell(config)
    out = {k: statistics.median(v) for k, v in alternate(config, floor_fn, repeats).items()}
    out["flops"] = flops
    return out


def print_cell_vs_floor(label: str, m: dict[str, float], repeats: int) -> None:
    ratio, ratio_cpu = m["cell"] / m["floor"], m["cell_cpu"] / m["floor_cpu"]
    print(f"    {label}cell {m['cell'] * 1e3:.1f} ms, floor {m['floor'] * 1e3:.1f} ms "
          f"({m['flops'] / m['floor'] / 1e9:.1f} GFLOP/s): ratio {ratio:.2f}× wall, "
          f"{ratio_cpu:.2f}× CPU time (target ≤ 1.6×): "
          f"{'PASS' if max(ratio, ratio_cpu) <= 1.6 else 'FAIL'}")


def compare_trees(trees: list[str], rounds: int, repeats: int, threads: int) -> None:
    """(d) for several byzbench checkouts (``NAME=PATH``), each in its own process with this
    script, the checkouts alternated ``rounds`` times; medians over the rounds."""
    results: dict[str, list[dict[str, float]]] = {}
    for _ in range(rounds):
        for tree in trees:
            name, path = tree.split("=", 1)
            env = dict(os.environ, PYTHONPATH=str(Path(path).resolve()))
            proc = subprocess.run([sys.executable, __file__, "--floor-only", "--repeats",
                                   str(repeats), "--threads", str(threads),
                                   "--device", DEVICE.type], env=env,
                                  capture_output=True, text=True, check=True)
            line = next(x for x in proc.stdout.splitlines() if x.startswith("CELL_FLOOR "))
            results.setdefault(name, []).append(json.loads(line.split(" ", 1)[1]))
    print(f"(d) reference cell vs its GEMM floor per checkout, {rounds} alternated processes × "
          f"{repeats} repeats, medians; load average {os.getloadavg()[0]:.2f}")
    for name, runs in results.items():
        m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print_cell_vs_floor(f"{name:>8}: ", m, repeats)


def bench_cold(repeats: int) -> None:
    """(g) host operations of a round alone and right after a round of local training."""
    from byzbench.defenses.base import RoundContext
    from byzbench.defenses.fedavg import FedAvg
    from byzbench.seeding import numpy_rng

    ds, model, theta, plan = reference_round()
    sim = Simulation(reference_cell())
    index, counts = sim.data.index, sim.data.counts
    updates = train_vectorized(model, theta, ds.x_train, ds.y_train, plan, 0.1)
    fedavg = FedAvg()
    ctx = RoundContext(round=0, client_ids=torch.arange(20), num_samples=counts.double(),
                       f=0, generator=torch.Generator(), global_params=theta)

    def train() -> None:
        train_vectorized(model, theta, ds.x_train, ds.y_train, plan, 0.1)

    ops: dict[str, Callable[[], object]] = {
        "seeded numpy generator + 16 bytes": lambda: numpy_rng(0, "nonce", 3).bytes(16),
        "the round's batch plan": lambda: plan_batches(index, counts, 32, 5, None,
                                                       torch.Generator().manual_seed(3)),
        "FedAvg of the round's updates": lambda: fedavg(updates, ctx),
    }
    print(f"(g) host operations of a round: alone (in a loop) and right after one round of "
          f"local training, µs, medians of {repeats} alternated")
    print(f"    {'operation':<40} {'alone':>8} {'after training':>15} {'ratio':>7}")
    for label, op in ops.items():
        op()
        alone: list[float] = []
        after: list[float] = []
        for _ in range(repeats):
            start = time.perf_counter()
            op()
            alone.append(time.perf_counter() - start)
            train()
            start = time.perf_counter()
            op()
            after.append(time.perf_counter() - start)
        a, b = statistics.median(alone), statistics.median(after)
        print(f"    {label:<40} {a * 1e6:>8.1f} {b * 1e6:>15.1f} {b / a:>6.1f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                        help="only (d), for each byzbench checkout given, alternated")
    parser.add_argument("--rounds", type=int, default=3, help="alternations for --tree")
    parser.add_argument("--plans", action="store_true", help="only (e), the batch plan")
    parser.add_argument("--breakdown", action="store_true",
                        help="only (f), the cell's time stage by stage")
    parser.add_argument("--cold", action="store_true",
                        help="only (g), host operations alone vs after local training")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where (a), (b) and (d) run")
    parser.add_argument("--floor-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.floor_only:
        print("CELL_FLOOR " + json.dumps(cell_vs_floor(args.repeats)))
        return
    if args.tree:
        compare_trees(args.tree, args.rounds, args.repeats, args.threads)
        return
    if args.plans:
        bench_plans(args.repeats)
        return
    if args.breakdown:
        breakdown(args.repeats)
        return
    if args.cold:
        bench_cold(max(args.repeats, 100))
        return
    where = (torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "CPU")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {where}\n")

    config = reference_cell()
    rss_before = rss_mib()
    start = time.perf_counter()
    first = run_cell(config)
    cold = time.perf_counter() - start
    warm = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = run_cell(config)
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
    m = cell_vs_floor(args.repeats)
    print(f"\n(d) reference cell vs its GEMM floor ({m['flops'] / 1e9:.2f} GFLOP), alternated, "
          f"medians of {args.repeats}:")
    print_cell_vs_floor("", m, args.repeats)
    if args.profile:
        profile_cell(config, args.repeats)
    print(f"\n(c) peak RSS of the process: {peak:.0f} MiB (RSS before the cell, after "
          f"imports: {rss_before:.0f} MiB)")


if __name__ == "__main__":
    main()
