"""Compiling the local step: how close does it bring training to its GEMM floor? (issue 16)

    python benchmarks/bench_fusion.py [--repeats 200] [--skip-compile]

At the engine's shapes each local step is some 16 small torch operators, and dispatching them
from Python costs about as much as their arithmetic. This times one round of the reference
cell's local training (digits, MLP [64], 20 clients, 5 steps of batch 32, lr 0.1; the same
batch plan) four ways, alternated ``--repeats`` times in this process on one torch thread,
medians:

- ``python``: the engine's step function (:func:`byzbench.engine.mlp_steps.sgd_steps`) run
  as plain Python (what a torch without TorchScript runs);
- ``torchscript``: the engine's default on the CPU, the same function compiled by
  ``torch.jit.script`` (no Python between operators; deprecated, torch 2.13 warns so);
- ``torch.compile``: the same function compiled by TorchInductor (its loops unrolled, the
  elementwise operators fused into generated C++; its first call compiles);
- ``floor``: the round's matrix products alone (``bench_engine.gemm_floor`` of a one-round
  cell: the 5 steps' products plus one evaluation's).

Each variant's updates are compared with ``python``'s: ``identical`` (bitwise) or the
largest absolute difference.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from bench_engine import REFERENCE_CELL, gemm_floor, reference_round

from byzbench.engine import mlp_steps
from byzbench.engine.training import train_vectorized

LR = 0.1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--skip-compile", action="store_true", help="leave out torch.compile")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds, model, theta, plan = reference_round()
    assert plan.full_batches, "the reference round has full batches"
    x, y = ds.x_train, ds.y_train

    compiled_steps = mlp_steps.compiled_sgd_steps()
    assert compiled_steps is not mlp_steps.sgd_steps, "TorchScript could not compile"

    def engine(steps: Callable[..., None]) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            mlp_steps._COMPILED = steps   # what the engine's trainer calls
            try:
                return train_vectorized(model, theta, x, y, plan, LR)
            finally:
                mlp_steps._COMPILED = compiled_steps
        return run

    variants: dict[str, Callable[[], torch.Tensor]] = {
        "python": engine(mlp_steps.sgd_steps), "torchscript": engine(compiled_steps)}
    compile_s = None
    if not args.skip_compile:
        inductor = engine(torch.compile(mlp_steps.sgd_steps, dynamic=False))
        start = time.perf_counter()
        inductor()
        compile_s = time.perf_counter() - start
        variants["torch.compile"] = inductor
    floor_fn, flops = gemm_floor(REFERENCE_CELL.model_copy(update={"rounds": 1}))
    variants["floor"] = lambda: floor_fn()  # type: ignore[func-returns-value]

    reference = variants["python"]()
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"one round of the reference cell's local training (20 clients × 5 steps × batch "
          f"32), torch {torch.__version__}, 1 thread, medians of {args.repeats} alternated")
    print(f"{'variant':>14} {'µs':>8} {'vs python':>10} {'vs floor':>9}  updates vs python")
    for name, t in med.items():
        if name == "floor":
            same = "-"
        else:
            out = variants[name]()
            same = ("identical" if torch.equal(out, reference)
                    else f"max |diff| {(out - reference).abs().max().item():.2e}")
        print(f"{name:>14} {t * 1e6:>8.0f} {t / med['python']:>9.2f}× "
              f"{t / med['floor']:>8.2f}×  {same}")
    if compile_s is not None:
        print(f"torch.compile's first call (compilation): {compile_s:.1f} s")


if __name__ == "__main__":
    main()
