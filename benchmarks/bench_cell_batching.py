"""Would training several cells' clients in one batched call make a grid faster?

    python benchmarks/bench_cell_batching.py [--cells 15] [--clients 20] [--repeats 20]

A grid's cells that share the dataset and the model could train their clients together:
one round of K cells as one ``train_vectorized`` call on K × n clients, each row from its
own cell's global model (``theta`` [K·n, d]), instead of K calls of n clients. This times
both on the reference cell's shapes (digits, MLP [64], 5 steps of batch 32, lr 0.1, one
torch thread), alternated ``--repeats`` times, medians, and checks that every cell's
updates are bit-identical either way (batching must not change a number). Ratio > 1: the
batched call is faster.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_engine import iid_client_plan

from byzbench.engine.training import BatchPlan, train_vectorized
from byzbench.models import BatchedMLP
from byzbench.registry import DATASETS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=15, help="K: cells batched together")
    ap.add_argument("--clients", type=int, default=20, help="clients per cell")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = DATASETS.get("digits")().load()
    model = BatchedMLP(64, [64], 10)
    k, n = args.cells, args.clients
    thetas = [model.init(torch.Generator().manual_seed(s)) for s in range(k)]
    plans = [iid_client_plan(len(ds.y_train), n, torch.Generator().manual_seed(100 + s))
             for s in range(k)]
    starts = torch.cat([t.unsqueeze(0).expand(n, -1) for t in thetas])
    joint = BatchPlan(rows=torch.cat([p.rows for p in plans], dim=1),
                      mask=torch.cat([p.mask for p in plans], dim=1),
                      full_steps=plans[0].full_steps,
                      full_batches=all(p.full_batches for p in plans))

    def separate() -> list[torch.Tensor]:
        return [train_vectorized(model, t, ds.x_train, ds.y_train, p, 0.1)
                for t, p in zip(thetas, plans)]

    def batched() -> torch.Tensor:
        return train_vectorized(model, starts, ds.x_train, ds.y_train, joint, 0.1)

    alone, together = separate(), batched()
    identical = all(torch.equal(together[i * n:(i + 1) * n], alone[i]) for i in range(k))
    times: dict[str, list[float]] = {"separate": [], "batched": []}
    for _ in range(args.repeats):
        for name, fn in (("separate", separate), ("batched", batched)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    sep, bat = (statistics.median(times[key]) for key in ("separate", "batched"))
    print(f"one round of {k} cells × {n} clients (digits MLP [64], 5 steps × batch 32, "
          f"1 thread), medians of {args.repeats}:")
    print(f"  {k} separate calls of {n} clients: {sep * 1e3:8.2f} ms")
    print(f"  one call of {k * n} clients:       {bat * 1e3:8.2f} ms")
    print(f"  separate / batched: {sep / bat:.2f}× ({'batched faster' if bat < sep else 'batched slower'})"
          f"; updates bit-identical: {identical}")


if __name__ == "__main__":
    main()
