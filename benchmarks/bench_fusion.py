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
- ``torch.compile``: the step as one function compiled by TorchInductor (fuses the
  elementwise operators into generated C++; its first call compiles);
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
from bench_engine import REFERENCE_CELL, gemm_floor, iid_client_plan

from byzbench.engine import mlp_steps
from byzbench.engine.simulation import build
from byzbench.engine.training import train_vectorized
from byzbench.models import BatchedMLP
from byzbench.registry import DATASETS

LR = 0.1


def step_math(w0: torch.Tensor, b0: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
              x: torch.Tensor, ys: torch.Tensor, minus_one: torch.Tensor, scale: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One SGD step of every client's MLP [64] (the arithmetic of ``_train_mlp_sgd`` on
    full batches), written functionally for ``torch.compile``."""
    h = torch.baddbmm(b0.unsqueeze(1), x, w0.transpose(1, 2)).relu()
    z = torch.baddbmm(b1.unsqueeze(2), w1, h.transpose(1, 2))
    e = (z - z.amax(dim=1, keepdim=True)).exp()
    delta = (e / e.sum(dim=1, keepdim=True)).scatter_add(1, ys, minus_one)
    dt = delta.transpose(1, 2)
    below = torch.ops.aten.threshold_backward(torch.bmm(dt, w1), h, 0.0)
    return (torch.baddbmm(w0, below.transpose(1, 2), x, alpha=scale),
            b0 + scale * below.sum(dim=1),
            torch.baddbmm(w1, dt.transpose(1, 2), h, alpha=scale),
            b1 + scale * dt.sum(dim=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--skip-compile", action="store_true", help="leave out torch.compile")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = build(DATASETS, REFERENCE_CELL.dataset).load()
    model = BatchedMLP(64, [64], 10)
    gen = torch.Generator().manual_seed(0)
    theta = model.init(gen)
    plan = iid_client_plan(len(ds.y_train), 20, gen)
    steps, n, b = plan.rows.shape
    assert plan.full_batches, "the reference round has full batches"
    x, y = ds.x_train, ds.y_train
    ys = y.index_select(0, plan.rows.reshape(-1)).view(steps, n, 1, b)
    minus_one = torch.full((1, 1, 1), -1.0).expand(n, 1, b)
    scale = -LR / b

    def fresh() -> list[torch.Tensor]:
        return [p.expand(n, *p.shape[1:]).clone() for p in model.unflatten(theta.unsqueeze(0))]

    def flat(params: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([p.reshape(n, -1) for p in params], dim=1) - theta

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
        compiled_step = torch.compile(step_math, dynamic=False)

        def compiled() -> torch.Tensor:
            w0, b0, w1, b1 = fresh()
            for s in range(steps):
                h0 = x.index_select(0, plan.rows[s].reshape(-1)).view(n, b, -1)
                w0, b0, w1, b1 = compiled_step(w0, b0, w1, b1, h0, ys[s], minus_one, scale)
            return flat([w0, b0, w1, b1])

        start = time.perf_counter()
        compiled()
        compile_s = time.perf_counter() - start
        variants["torch.compile"] = compiled
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
