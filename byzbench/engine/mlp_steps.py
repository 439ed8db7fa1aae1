"""The local SGD steps of every client's MLP, run by TorchScript where it is available.

At the engine's shapes (a few dozen clients, batches of 32, layers of 64) each local step is
some 16 small torch operators, and Python's dispatch between them costs about as much as
the non-matrix arithmetic itself: ``benchmarks/bench_fusion.py`` measures one round of the
reference cell at 1.28× its matrix-product floor as Python and 1.13× compiled by
TorchScript, with bitwise-identical updates (the same ATen operators in the same order;
TorchScript's CPU fuser is off by default, so nothing is merged). ``torch.compile`` of the
same function was slower than TorchScript at these shapes (1.19×, same benchmark) and
rounds differently.

TorchScript is deprecated (torch 2.13 warns so): :func:`sgd_steps` is plain Python that
TorchScript compiles, and when compiling fails — a torch without TorchScript — the same
function runs as Python, with the same results, only slower. Only CPU tensors take the
compiled path: on a GPU TorchScript's fuser may merge elementwise kernels (different
rounding from the CPU path's operators) and nothing here has measured it.

(This module deliberately has no ``from __future__ import annotations``: TorchScript reads
the annotations as written.)
"""

import warnings
from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch import Tensor


def sgd_steps(params: list[Tensor], data_x: Tensor, rows: Tensor, ys: Tensor,
              minus_one: Tensor, weights: Optional[Tensor], counts: Optional[Tensor],  # noqa: UP045 (TorchScript needs Optional)
              all_active: list[bool], scale: float) -> None:
    """Plain SGD on every client's MLP in place: ``params`` = [W₀, b₀, W₁, b₁, …] batched
    over clients ([n, out, in] and [n, out]); step s trains on inputs
    ``data_x[rows[s]]`` ([steps, n, B] row indices) with labels ``ys[s]`` ([steps, n, 1, B]).
    The arithmetic of :meth:`byzbench.models.BatchedMLP.loss_grad` followed by the step:
    the output layer works on transposed logits [n, classes, B]; each weight gradient is
    applied by the product that computes it (W ← W + scale·δᵀh, ``scale`` = −lr, or −lr/B
    when ``weights`` is None: every sample of every client weighs 1/B); ``weights``
    [steps, n, 1, B] the per-sample weights otherwise. A client with ``counts[s]`` = 0 sits
    step s out (its parameters restored exactly); ``all_active[s]`` says none does.
    ``minus_one`` is −1 of shape [n, 1, B] (the one-hot's scatter source)."""
    n = rows.shape[1]
    b = rows.shape[2]
    last = len(params) // 2 - 1                                     # index of the output layer
    weight = [params[2 * i] for i in range(last + 1)]
    bias = [params[2 * i + 1] for i in range(last + 1)]
    # views made once; the in-place updates show through them
    weight_t = [w.transpose(1, 2) for w in weight]
    bias_row = [v.unsqueeze(1) for v in bias]
    out_bias = bias[last].unsqueeze(2)
    for s in range(rows.shape[0]):
        before: list[Tensor] = []
        if not all_active[s]:
            before = [p.clone() for p in params]
        # each step's inputs gathered just before it: the working set stays in cache
        h = data_x.index_select(0, rows[s].reshape(-1)).view(n, b, -1)
        inputs: list[Tensor] = []
        for i in range(last):
            inputs.append(h)
            h = torch.baddbmm(bias_row[i], h, weight_t[i]).relu_()
        inputs.append(h)
        # d(weighted CE)/d(logits)ᵀ = w · (softmax − onehot), as [n, classes, B]
        z = torch.baddbmm(out_bias, weight[last], h.transpose(1, 2))
        delta = z.sub_(z.amax(dim=1, keepdim=True)).exp_()
        delta.div_(delta.sum(dim=1, keepdim=True)).scatter_add_(1, ys[s], minus_one)
        if weights is not None:
            delta.mul_(weights[s])
        delta_t = delta.transpose(1, 2)                             # [n, B, classes]
        for j in range(last + 1):
            i = last - j
            # into the layer below through this layer's weights before their update; ReLU's
            # backward zeroes it where the layer below's output was not positive
            below = delta_t
            if i > 0:
                below = torch.ops.aten.threshold_backward(torch.bmm(delta_t, weight[i]),
                                                          inputs[i], 0.0)
            bias[i].add_(delta_t.sum(dim=1), alpha=scale)
            weight[i].baddbmm_(delta_t.transpose(1, 2), inputs[i], alpha=scale)
            delta_t = below
        if not all_active[s]:
            assert counts is not None
            active = counts[s] > 0
            for k in range(len(params)):
                p = params[k]
                p.copy_(torch.where(active.view([n] + [1] * (p.dim() - 1)), p, before[k]))


_COMPILED: Callable[..., None] | None = None


def compiled_sgd_steps() -> Callable[..., None]:
    """:func:`sgd_steps` compiled by TorchScript (once per process), or the function itself
    where TorchScript cannot compile it."""
    global _COMPILED
    if _COMPILED is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation notice
                _COMPILED = torch.jit.script(sgd_steps)
        except Exception:  # noqa: BLE001 - no TorchScript: the same arithmetic in Python
            _COMPILED = sgd_steps
    return _COMPILED


def run_sgd_steps(params: list[Tensor], data_x: Tensor, rows: Tensor, ys: Tensor,
                  minus_one: Tensor, weights: Tensor | None, counts: Tensor | None,
                  all_active: Sequence[bool], scale: float) -> None:
    """:func:`sgd_steps`, compiled on the CPU, as Python elsewhere (``scale`` and
    ``all_active`` as the compiled function's types: an integer learning rate or numpy
    booleans are fine)."""
    steps = compiled_sgd_steps() if data_x.device.type == "cpu" else sgd_steps
    steps(params, data_x, rows, ys, minus_one, weights, counts,
          [bool(a) for a in all_active], float(scale))
