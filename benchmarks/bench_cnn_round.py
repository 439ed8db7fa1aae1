"""The papers' CNN on Fashion-MNIST-shaped data: one vectorized client round against its
FLOP floor, measured side by side in one run (issue 13, item 3; issue 16).

The model is FLTrust's / Fang et al.'s CNN (two 3×3 convolutions with 30 and 50 channels,
each followed by 2×2 max-pooling, a 100-unit dense layer; byzbench's
``{name: cnn, channels: [30, 50], hidden: 100}``, padding 1). One round = every client's
loss gradient on one batch (``loss_grad``, what each local step computes), for
``--clients`` clients of ``--batch`` 1×28×28 images. The floor is the round's FLOPs
(forward ×3 for forward + backward) at the GEMM rate of this machine, measured on a
2048² float32 matrix product in the same run. Target (issue 13): round ≤ 2× floor on CPU.

    python benchmarks/bench_cnn_round.py [--clients 100] [--batch 32] [--repeat 3]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from byzbench.models import BatchedCNN

TARGET = 2.0


def forward_flops(clients: int, batch: int, model: BatchedCNN) -> float:
    """Multiply-adds ×2 of one forward pass over every client's batch."""
    c, h, w = model.input_shape
    flops = 0.0
    for cin, cout in zip(model.channels[:-1], model.channels[1:]):
        flops += 2.0 * h * w * cout * cin * 9  # 3×3 convolution, padding 1
        h, w = h // 2, w // 2
    flops += 2.0 * model.flat * model.hidden + 2.0 * model.hidden * model.num_classes
    return clients * batch * flops


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    model = BatchedCNN((1, 28, 28), [30, 50], 100, 10)
    n, b = args.clients, args.batch
    W = model.init(g).expand(n, -1).contiguous()
    x = torch.rand(n, b, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n, b), generator=g)
    weights = torch.full((n, b), 1.0 / b)
    a = torch.randn(2048, 2048, generator=g)
    gemm_rate = 2 * 2048 ** 3 / timed(lambda: a @ a, args.repeat)
    round_s = timed(lambda: model.loss_grad(W, x, y, weights), args.repeat)
    floor_s = 3 * forward_flops(n, b, model) / gemm_rate
    ratio = round_s / floor_s
    print(f"papers' CNN (d = {model.dim:,}), {n} clients × batch {b}, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeat}")
    print(f"GEMM rate {gemm_rate / 1e9:.1f} GFLOP/s; round {round_s:.2f} s; "
          f"FLOP floor {floor_s:.2f} s; ratio {ratio:.2f}× (target ≤ {TARGET}×): "
          f"{'PASS' if ratio <= TARGET else 'FAIL'}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
