"""The papers' CNN on Fashion-MNIST-shaped data: one vectorized client round against its
GEMM floor, measured side by side in one run (issue 13, item 3; issue 16).

The model is FLTrust's / Fang et al.'s CNN (two 3×3 'valid' convolutions with 30 and 50
channels, each followed by 2×2 max-pooling, a 100-unit dense layer; byzbench's
``{name: cnn, channels: [30, 50], hidden: 100, padding: 0}``). One round = every client's
loss gradient on one batch (``loss_grad``, what each local step computes; the papers train
one local iteration per round) for ``--clients`` clients of ``--batch`` 1×28×28 images.

The floor is the time of the round's GEMMs alone: for every convolution (as im2col GEMMs)
and dense layer, the forward product, the weight-gradient product and — except for the
first convolution, whose input needs no gradient — the input-gradient product, each timed
as one batched matrix product over clients (``bmm``, per-client weights, contiguous
operands, preallocated output) at the round's shapes, in whichever orientation (C = A·B or
Cᵀ = Bᵀ·Aᵀ) is faster, on the same threads, interleaved with the round. Only the convolution outputs that 2×2 pooling keeps are counted (an odd 11×11
map loses its last row and column), so the floor is the least GEMM work the round needs.
A second, stricter figure divides the same FLOPs by the rate of a 2048² float32 matrix
product (this machine's GEMM peak); it is reported, not the target. ``--old`` also times
the previous implementation (autograd through one grouped convolution over all clients).
Target (issue 13): round ≤ 2× floor on CPU. ``--device cuda`` runs the round, the floor
GEMMs and the peak product on the GPU, each timing ended by ``torch.cuda.synchronize``.

    python benchmarks/bench_cnn_round.py [--clients 100] [--batch 32] [--repeat 5]
        [--threads 1,2] [--old] [--padding 0] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from byzbench.models import BatchedCNN, BatchedModel

TARGET = 2.0


def gemm_shapes(model: BatchedCNN, clients: int, batch: int) -> list[tuple[int, int, int]]:
    """(M, K, N) per client of every matrix product of one forward + backward pass."""
    _, h, w = model.input_shape
    shapes: list[tuple[int, int, int]] = []
    for i, (cin, cout) in enumerate(zip(model.channels[:-1], model.channels[1:])):
        h, w = (h + 2 * model.padding - 2) // 2, (w + 2 * model.padding - 2) // 2
        m, k = batch * 4 * h * w, 9 * cin   # positions kept by pooling × 3·3·cin
        shapes += [(m, k, cout), (k, m, cout)] + ([(m, cout, k)] if i else [])
    for k, n in ((model.flat, model.hidden), (model.hidden, model.num_classes)):
        shapes += [(batch, k, n), (n, batch, k), (batch, n, k)]
    return shapes


def interleaved(fns: dict[str, Callable[[], object]], repeat: int,
                device: torch.device) -> dict[str, float]:
    """Median seconds of each function, the repeats interleaved so load hits all alike
    (on a GPU, each timing waits for the function's kernels)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():
        fn()  # warm-up (and the model's scratch buffers)
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", default="1", help="comma-separated torch thread counts")
    ap.add_argument("--padding", type=int, default=0, choices=[0, 1])
    ap.add_argument("--old", action="store_true",
                    help="also time the previous path (autograd through a grouped conv)")
    ap.add_argument("--detail", action="store_true",
                    help="print each floor GEMM's time and the round's torch.profiler table")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    model = BatchedCNN((1, 28, 28), [30, 50], 100, 10, padding=args.padding)
    n, b = args.clients, args.batch
    W = model.init(g).expand(n, -1).contiguous().to(dev)
    x = torch.rand(n, b, 1, 28, 28, generator=g).to(dev)
    y = torch.randint(0, 10, (n, b), generator=g).to(dev)
    weights = torch.full((n, b), 1.0 / b, device=dev)
    shapes = gemm_shapes(model, n, b)
    flops = sum(2.0 * n * m * k * c for m, k, c in shapes)
    # each product in both orientations, C = A·B [M, N] and Cᵀ = Bᵀ·Aᵀ [N, M]: MKL's speed
    # differs by up to 2× between them at these skinny shapes; the floor takes the faster
    operands = [(torch.randn(n, m, k, generator=g).to(dev),
                 torch.randn(n, k, c, generator=g).to(dev),
                 torch.empty(n, m, c, device=dev)) for m, k, c in shapes]
    operands += [(q.transpose(1, 2).contiguous(), p.transpose(1, 2).contiguous(),
                  torch.empty(n, out.shape[2], out.shape[1], device=dev))
                 for p, q, out in operands]
    peak_size = 2048 if dev.type == "cpu" else 8192   # a 2048² product is too short on a GPU
    a = torch.randn(peak_size, peak_size, generator=g).to(dev)
    peak_out = torch.empty(peak_size, peak_size, device=dev)
    gemms: dict[str, Callable[[], object]] = {
        f"gemm{i}": (lambda p=p, q=q, out=out: torch.bmm(p, q, out=out))
        for i, (p, q, out) in enumerate(operands)}
    fns: dict[str, Callable[[], object]] = {
        **gemms,
        "peak": lambda: torch.mm(a, a, out=peak_out),
        "round": lambda: model.loss_grad(W, x, y, weights),
    }
    if args.old:
        fns["old"] = lambda: BatchedModel.loss_grad(model, W, x, y, weights)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"papers' CNN (d = {model.dim:,}, padding {args.padding}), {n} clients × batch {b}: "
          f"{flops / 1e9:.1f} GFLOP of GEMMs a round; median of {args.repeat} interleaved; "
          f"{where}, torch {torch.__version__}, TF32 matmul "
          f"{torch.backends.cuda.matmul.allow_tf32 if dev.type == 'cuda' else 'n/a'}")
    ok = True
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        t = interleaved(fns, args.repeat, dev)
        k = len(shapes)
        t["floor"] = sum(min(t[f"gemm{i}"], t[f"gemm{i + k}"]) for i in range(k))
        rate = 2 * peak_size ** 3 / t["peak"]
        ratio = t["round"] / t["floor"]
        ok &= ratio <= TARGET
        line = (f"{threads} thread(s): round {t['round']:.3f} s; GEMM floor {t['floor']:.3f} s "
                f"({flops / t['floor'] / 1e9:.0f} GFLOP/s); ratio {ratio:.2f}× "
                f"(target ≤ {TARGET}×: {'PASS' if ratio <= TARGET else 'FAIL'}); "
                f"at the {peak_size}² GEMM rate ({rate / 1e9:.0f} GFLOP/s) "
                f"{t['round'] * rate / flops:.2f}×")
        if "old" in t:
            line += (f"; previous path {t['old']:.3f} s = {t['old'] / t['floor']:.2f}× floor, "
                     f"{t['old'] / t['round']:.2f}× this one")
        print(line, flush=True)
        if args.detail:
            print("  floor GEMMs per client (M × K × N), batched over clients; median ms "
                  "as C = A·B and as Cᵀ = Bᵀ·Aᵀ:")
            for i, (m, kk, c) in enumerate(shapes):
                print(f"    {m:>6} × {kk:>5} × {c:>5}: {t[f'gemm{i}'] * 1e3:7.1f} "
                      f"{t[f'gemm{i + k}'] * 1e3:7.1f}")
            detail(fns["round"], dev)
    return 0 if ok else 1


def detail(round_fn: Callable[[], object], device: torch.device) -> None:
    """Where the round spends its time (one more run, under torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities, record_shapes=True) as prof:
        round_fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by=sort, row_limit=20, max_name_column_width=34,
        max_shapes_column_width=60))


if __name__ == "__main__":
    sys.exit(main())
