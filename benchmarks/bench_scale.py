"""Scale: one cell at 10, 100 and 1,000 clients, and the grid-level speedup of --workers 2.

    python benchmarks/bench_scale.py [--threads 1] [--repeats 3] [--seeds 24] [--skip-grid]
                                      [--skip-sizes] [--device cuda]

(a) One cell per federation size — synthetic data (10 classes, 20 features, 50 training
    samples per client), mlp [64], FedAvg, no attack, 10 rounds of 5 local steps (batch 32,
    lr 0.1), every client every round, evaluated every 5 rounds — each in a fresh
    subprocess, so its peak RSS is its own. Printed: cell wall time (the dataset already
    generated in that process), peak RSS and RSS before the cell, and the time per client
    trained (wall / (clients per round × rounds)); time grows no worse than linearly in the
    clients trained per round when that per-client time does not grow. Also 1,000 clients
    with client_chunk = 100 (bounded training memory, same numbers) and with 100 clients
    sampled per round (time follows the clients per round, not the federation).
    ``--device cuda`` runs these cells with ``device: cuda`` (peak RSS is then the host's
    only; the GPU's peak allocation is printed beside it).
(b) Grid speedup of ``byzbench run --workers 2`` over ``--workers 1`` (each ``--force``,
    separate results directories, in fresh processes, alternated ``--repeats`` times; the
    median is reported) on configs/quick.yaml and on a copy of it with ``--seeds`` seeds
    written to a temporary directory (quick.yaml's 2 cells take ~0.2 s, too little work to
    amortise worker start-up). "grid" is the time from the first cell's start (stamped by
    the worker that runs it) to the last cell stored, from the database; "process" adds
    interpreter start, imports and exit. Every cell runs on one torch thread by default, so
    ``--workers 1`` is the one-core baseline and 2× is the ceiling of ``--workers 2``; the
    grid is also run with ``--workers 1 --threads 2`` (one process, both cores as torch
    threads), the other way to use two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _memory import peak_rss_mib, rss_mib

ROOT = Path(__file__).resolve().parents[1]
SIZES = (10, 100, 1000)
ROUNDS = 10
PER_CLIENT = 50


# ----------------------------------------------------------------------------- (a) one cell

def cell_config(clients: int, chunk: int | None, per_round: int | None, device: str = "cpu"):
    from byzbench.config import CellConfig, ComponentSpec

    return CellConfig(
        dataset=ComponentSpec(name="synthetic", params={"train_samples": PER_CLIENT * clients,
                                                        "test_samples": 2000}),
        model=ComponentSpec(name="mlp", params={"hidden": [64]}),
        clients=clients, clients_per_round=per_round, rounds=ROUNDS, eval_every=5,
        local={"steps": 5, "batch_size": 32, "lr": 0.1},
        defense=ComponentSpec(name="fedavg"), attack=ComponentSpec(name="none"),
        device=device, client_chunk=chunk)


def one_cell(clients: int, chunk: int | None, per_round: int | None, threads: int,
             device: str = "cpu") -> dict:
    """Run in a fresh subprocess: one cell, timed, with this process's memory."""
    import torch

    from byzbench.engine.simulation import build, run_cell
    from byzbench.registry import DATASETS

    torch.set_num_threads(threads)
    config = cell_config(clients, chunk, per_round, device)
    if device == "cuda":  # the context's start-up is not the cell's
        torch.zeros(1, device=device).sum().item()
    start = time.perf_counter()
    build(DATASETS, config.dataset).load()  # generated once, cached in the process
    data_s = time.perf_counter() - start
    before = rss_mib()
    start = time.perf_counter()
    result = run_cell(config)
    wall = time.perf_counter() - start
    peak = peak_rss_mib()
    assert result.status == "done", result.error
    gpu_peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda" else None
    return {"clients": clients, "per_round": config.participants, "chunk": chunk,
            "gpu_peak_mib": gpu_peak,
            "wall_s": wall, "data_s": data_s, "rss_before_mib": before, "peak_mib": peak,
            "d": result.summary["d"], "accuracy": result.summary["accuracy"]}


def run_sizes(threads: int, device: str = "cpu") -> None:
    print(f"(a) one cell: synthetic (10 classes, 20 features, {PER_CLIENT} samples/client), "
          f"mlp [64], FedAvg, {ROUNDS} rounds × 5 local steps (batch 32); torch threads "
          f"{threads}; device {device}; one fresh process per row")
    print(f"{'clients':>8} {'per round':>9} {'chunk':>6} {'cell s':>8} {'µs/client·round':>16} "
          f"{'vs 10':>6} {'peak MiB':>9} {'RSS before':>11} {'accuracy':>9}")
    rows = []
    runs = [(n, None, None) for n in SIZES] + [(1000, 100, None), (1000, None, 100)]
    for clients, chunk, per_round in runs:
        cmd = [sys.executable, __file__, "--cell", str(clients), "--threads", str(threads),
               "--device", device]
        if chunk:
            cmd += ["--chunk", str(chunk)]
        if per_round:
            cmd += ["--per-round", str(per_round)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            sys.exit(f"cell of {clients} clients failed:\n{out.stderr}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        per_client = row["wall_s"] / (row["per_round"] * ROUNDS)
        row["per_client_s"] = per_client
        rows.append(row)
        base = rows[0]["per_client_s"]
        print(f"{row['clients']:>8,} {row['per_round']:>9,} {str(chunk or '-'):>6} "
              f"{row['wall_s']:>8.2f} {per_client * 1e6:>16.1f} {per_client / base:>5.2f}× "
              f"{row['peak_mib']:>9.0f} {row['rss_before_mib']:>11.0f} "
              f"{row['accuracy']:>9.3f}"
              + (f"  GPU peak {row['gpu_peak_mib']:.0f} MiB" if row["gpu_peak_mib"] else ""))
    full = {r["clients"]: r for r in rows if r["chunk"] is None and r["per_round"] == r["clients"]}
    growth = full[1000]["wall_s"] / full[10]["wall_s"]
    worst = max(r["per_client_s"] for r in full.values()) / full[10]["per_client_s"]
    verdict = "PASS" if full[1000]["per_client_s"] <= 1.10 * full[10]["per_client_s"] else "FAIL"
    print(f"    10 → 1,000 clients (100× the clients trained per round): cell time ×{growth:.1f}; "
          f"time per client trained at 1,000 is {full[1000]['per_client_s'] / full[10]['per_client_s']:.2f}× "
          f"that at 10 (worst size {worst:.2f}×) — no worse than linear: {verdict}")
    chunked = next(r for r in rows if r["chunk"])
    print(f"    1,000 clients with client_chunk 100: {chunked['wall_s']:.2f} s, peak "
          f"{chunked['peak_mib']:.0f} MiB (unchunked {full[1000]['peak_mib']:.0f} MiB); same "
          f"accuracy: {chunked['accuracy'] == full[1000]['accuracy']}")
    print(f"    model d = {rows[0]['d']:,} parameters; dataset generation (not in cell time): "
          + ", ".join(f"{r['clients']:,}: {r['data_s']:.2f} s" for r in rows[:3]))


# ----------------------------------------------------------------------------- (b) grid


def cells_span(results: Path) -> float:
    with sqlite3.connect(results / "results.db") as conn:
        first, last = conn.execute("SELECT MIN(started), MAX(finished) FROM cells").fetchone()
    return float(last - first)


def cli_run(grid: Path, workers: int, results: Path, threads: int | None = None
            ) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "byzbench", "run", str(grid), "--workers", str(workers),
           "--force", "-q", "-o", str(results)] + (["--threads", str(threads)] if threads else [])
    start = time.perf_counter()
    subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return cells_span(results), time.perf_counter() - start


def run_grids(seeds: int, repeats: int, tmp: Path) -> None:
    raw = yaml.safe_load((ROOT / "configs" / "quick.yaml").read_text())
    raw["name"] = f"quick_{seeds}seeds"
    raw["grid"]["seed"] = list(range(seeds))
    bigger = tmp / f"quick_{seeds}seeds.yaml"
    bigger.write_text(yaml.safe_dump(raw, sort_keys=False))
    cpus = os.cpu_count() or 1
    print(f"\n(b) grid speedup, --workers 2 over --workers 1 ({cpus} CPUs; --force, separate "
          f"results dirs, the three runs alternated {repeats}×, medians)")
    print(f"{'grid':<30} {'cells':>5} {'w1 grid s':>9} {'w2 grid s':>9} {'speedup':>8} "
          f"{'ceiling':>8} {'w1 process s':>12} {'w2 process s':>12} {'speedup':>8}")
    for grid, label in ((ROOT / "configs" / "quick.yaml", "configs/quick.yaml"),
                        (bigger, f"quick.yaml, seeds 0..{seeds - 1}")):
        cells = len(yaml.safe_load(grid.read_text())["grid"]["seed"])
        times: dict[str, list[tuple[float, float]]] = {"w1": [], "w2": [], "w1t2": []}
        for _ in range(repeats):
            times["w1"].append(cli_run(grid, 1, tmp / f"{grid.stem}_w1"))
            times["w2"].append(cli_run(grid, 2, tmp / f"{grid.stem}_w2"))
            times["w1t2"].append(cli_run(grid, 1, tmp / f"{grid.stem}_w1t2", threads=2))
        g1, p1 = (statistics.median(t[i] for t in times["w1"]) for i in (0, 1))
        g2, p2 = (statistics.median(t[i] for t in times["w2"]) for i in (0, 1))
        two = statistics.median(t[0] for t in times["w1t2"])
        print(f"{label:<30} {cells:>5} {g1:>9.3f} {g2:>9.3f} {g1 / g2:>7.2f}× {2.0:>7.2f}× "
              f"{p1:>12.2f} {p2:>12.2f} {p1 / p2:>7.2f}×")
        print(f"{'':<30} {'':>5} --workers 1 --threads 2: {two:.3f} s grid, "
              f"{g1 / two:.2f}× the one-thread --workers 1")
    print("    grid = first cell start → last cell stored (database timestamps; a worker "
          "stamps its cell's start); process = the whole command. ceiling: two one-thread "
          "processes can at best halve the one-thread (--workers 1) grid.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for (a)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=24)
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument("--skip-sizes", action="store_true", help="only (b)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where the cells of (a) run")
    parser.add_argument("--cell", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--per-round", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(one_cell(args.cell, args.chunk, args.per_round, args.threads,
                                  args.device)))
        return
    import torch

    print(f"torch {torch.__version__}; {os.cpu_count()} CPUs; CUDA available: "
          f"{torch.cuda.is_available()}; load average at start "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    if not args.skip_sizes:
        run_sizes(args.threads, args.device)
    if not args.skip_grid:
        with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
            run_grids(args.seeds, args.repeats, Path(tmp))
    print(f"\nload average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          "(other processes on this machine share its CPUs)")


if __name__ == "__main__":
    main()
