"""Local training of all of a round's clients at once, and a plain per-client reference.

The vectorized path stacks the clients' parameters as rows of one ``[n, d]`` matrix and runs
one batched forward/backward per local step (:class:`~byzbench.models.BatchedModel`); SGD
with momentum and weight decay is applied to the whole matrix. Clients whose data is
exhausted for an epoch sit the step out (a per-client step mask), so clients of different
sizes train exactly as they would alone. :func:`train_reference` trains the same clients one
after another with ``torch.nn`` modules and ``torch.optim.SGD`` on the *same* batches; the
tests hold the two to 1e-5.

Large federations: :func:`train_chunked` trains the clients of one plan in slices of at most
``chunk`` rows (the plan is drawn once for all of them, so chunking never changes a draw),
writing each slice's updates into one preallocated ``[n, d]`` matrix; peak memory then grows
with ``chunk`` instead of with ``n``. Device: a plan is best drawn on the host (CPU
generator, so every device sees the same batches) and moved with :meth:`BatchPlan.to`, which
also records on the host which steps have every client active — so a round on a GPU needs no
device-to-host copy to train.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from byzbench.engine.mlp_steps import run_sgd_steps
from byzbench.models import BatchedMLP, BatchedModel


@dataclass(frozen=True)
class ClientData:
    """Training data of the federation, indexed per client.

    ``x``/``y`` (on the cell's device) hold every sample once, plus poisoned copies of the
    malicious clients' samples, appended. The tables live on the host, where batch plans
    are drawn: ``index[c, j]`` is the row of client ``c``'s j-th sample (padding beyond
    ``counts[c]`` is 0), ``poisoned_index`` the same table pointing malicious clients at
    their poisoned copies.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor           # [clients, max_n] long, host
    counts: torch.Tensor          # [clients] long, host
    poisoned_index: torch.Tensor | None = None  # host


@dataclass(frozen=True)
class BatchPlan:
    """Sample rows for every local step: ``rows[s, i, b]`` valid where ``mask[s, i, b]``.

    ``full_steps`` (optional, a host-side tuple): per step, whether every client of the plan
    takes it; when absent, :func:`train_vectorized` derives it with one host sync.
    ``full_batches`` (optional): every client draws a full batch at every step.
    """

    rows: torch.Tensor  # [steps, n, B] long, rows of ClientData.x
    mask: torch.Tensor  # [steps, n, B] bool
    full_steps: tuple[bool, ...] | None = None
    full_batches: bool | None = None  # host-side: mask is all True (None: not known)

    @property
    def steps(self) -> int:
        return int(self.rows.shape[0])

    @property
    def clients(self) -> int:
        return int(self.rows.shape[1])

    def slice(self, start: int, stop: int) -> BatchPlan:
        """The plan of clients ``start:stop`` (views; same draws as in the whole plan)."""
        rows, mask = self.rows[:, start:stop], self.mask[:, start:stop]
        full = None
        if mask.device.type == "cpu":  # free on the host; on a device leave it to the trainer
            full = tuple((mask.sum(dim=2) > 0).all(dim=1).tolist())
        return BatchPlan(rows=rows, mask=mask, full_steps=full,
                         full_batches=True if self.full_batches else None)

    def to(self, device: torch.device | str) -> BatchPlan:
        """This plan on ``device``; from the host it is copied asynchronously (pinned)."""
        device = torch.device(device)
        full = self.full_steps
        if full is None and self.mask.device.type == "cpu":
            full = tuple((self.mask.sum(dim=2) > 0).all(dim=1).tolist())
        if self.rows.device == device:
            return BatchPlan(rows=self.rows, mask=self.mask, full_steps=full,
                             full_batches=self.full_batches)
        return BatchPlan(rows=to_device(self.rows, device), mask=to_device(self.mask, device),
                         full_steps=full, full_batches=self.full_batches)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to ``device`` without stalling the host: a CUDA copy goes through
    pinned memory with ``non_blocking=True`` (a pageable copy would wait for the stream)."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.contiguous().pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def plan_batches(index: torch.Tensor, counts: torch.Tensor, batch_size: int,
                 steps: int | None, epochs: int | None, generator: torch.Generator
                 ) -> BatchPlan:
    """Draw the local mini-batches of ``n`` clients (``index``/``counts`` of those clients).

    ``steps``: each step draws min(B, n_i) of client i's samples without replacement.
    ``epochs``: each epoch walks a fresh permutation of each client's samples in batches of
    B (the last one partial); a client with fewer batches sits out the epoch's later steps.
    """
    n, max_n = index.shape
    device = index.device
    b = min(batch_size, max_n)
    if steps is not None and device.type == "cpu":
        return _plan_steps_on_host(index, counts, b, steps, generator)
    positions = torch.arange(max_n, device=device)
    padding = positions.unsqueeze(0) >= counts.unsqueeze(1)  # [n, max_n]
    if steps is not None:
        keys = torch.rand(steps, n, max_n, generator=generator, device=device)
        keys.masked_fill_(padding.unsqueeze(0), 2.0)
        order = smallest_sorted(keys, b)                            # [steps, n, b]
        mask = torch.arange(b, device=device).expand(steps, n, b) < counts.view(1, n, 1)
    else:
        assert epochs is not None
        per_epoch = -(-max_n // b)
        keys = torch.rand(epochs, n, max_n, generator=generator, device=device)
        keys.masked_fill_(padding.unsqueeze(0), 2.0)
        perm = keys.argsort(dim=2)  # [epochs, n, max_n]
        pad = per_epoch * b - max_n
        if pad:
            perm = torch.cat([perm, perm.new_zeros(epochs, n, pad)], dim=2)
        order = perm.view(epochs, n, per_epoch, b).transpose(1, 2).reshape(-1, n, b)
        slot = (torch.arange(per_epoch * b, device=device).view(per_epoch, 1, b))
        mask = (slot < counts.view(1, n, 1)).repeat(epochs, 1, 1)
    rows = torch.gather(index.unsqueeze(0).expand(order.shape[0], n, max_n), 2, order)
    return BatchPlan(rows=rows, mask=mask)


def _plan_steps_on_host(index: torch.Tensor, counts: torch.Tensor, b: int, steps: int,
                        generator: torch.Generator) -> BatchPlan:
    """:func:`plan_batches` with ``steps`` on the host: the same draws and the same plan, in
    numpy after the one ``torch.rand`` (a plan per round is on every cell's path)."""
    n, max_n = index.shape
    keys = torch.rand(steps, n, max_n, generator=generator)
    held = counts.numpy()
    fewest = int(held.min())
    padding = np.arange(max_n) >= held[:, None] if fewest < max_n else None  # [n, max_n]
    order = _packed_smallest(keys.numpy(), b, padding)
    if order is None:
        if padding is not None:
            keys.masked_fill_(torch.from_numpy(padding), 2.0)
        order = smallest_sorted(keys, b).numpy()
    # client i's j-th sample is row index[i, j]: one flat take instead of a gather
    rows = np.take(index.numpy().reshape(-1), order + np.arange(n).reshape(1, n, 1) * max_n)
    if fewest >= b:
        mask = torch.ones(steps, n, b, dtype=torch.bool)
    else:
        mask = torch.from_numpy(np.arange(b) < held[:, None]).expand(steps, n, b).contiguous()
    # the same clients take every step
    return BatchPlan(rows=torch.from_numpy(rows), mask=mask, full_steps=(fewest > 0,) * steps,
                     full_batches=fewest >= b)


_UNIT_BITS = 24            # torch.rand's float32 draws are multiples of 2^-24 in [0, 1)
_PAD_KEY = (1 << _UNIT_BITS) - 1  # what the padding key 2.0 becomes in the packed sort
_POS_BITS = 8             # positions packed below the key: rows of at most 256 keys
_LARGEST_DRAW = np.float32(1 - 2.0 ** -_UNIT_BITS)


def smallest_sorted(keys: torch.Tensor, b: int) -> torch.Tensor:
    """``keys.topk(b, dim=2, largest=False, sorted=True).indices``: each row's b smallest
    keys, ascending, for keys in [0, 1) (``torch.rand``'s draws) or at the padding value 2.0.

    On the CPU, for rows of at most 256 keys, each key is packed with its position into one
    uint32 — the key's 24 significant bits (``torch.rand`` draws k·2^-24 exactly) above the
    position's 8 — and numpy sorts the packed values, so the sort carries the indices with
    it (``benchmarks/bench_engine.py --plans``: several times faster than ``topk`` on
    fresh random keys, and faster than ``argsort`` with the same tie test); longer rows
    use ``argsort``. The indices are topk's whenever they are unique — no two equal keys
    among a row's b + 1 smallest below the padding value (padding positions all index the
    same padding row, so their order cannot matter); otherwise ``topk`` decides, so ties
    resolve exactly as before."""
    if keys.device.type == "cpu" and keys.dtype == torch.float32 and keys.shape[2]:
        k = keys.numpy()
        packed = _packed_smallest(k, b)
        if packed is not None:
            return torch.from_numpy(packed)
        if k.shape[2] > 1 << _POS_BITS:
            idx = np.argsort(k, axis=2)[..., :b + 1]
            vals = np.take_along_axis(k, idx, axis=2)
            if not ((vals[..., 1:] == vals[..., :-1]) & (vals[..., 1:] < 2.0)).any():
                return torch.from_numpy(np.ascontiguousarray(idx[..., :b], dtype=np.int64))
    return keys.topk(b, dim=2, largest=False, sorted=True).indices


def _packed_smallest(k: np.ndarray, b: int, padding: np.ndarray | None = None
                     ) -> np.ndarray | None:
    """:func:`smallest_sorted` by one numpy sort of (key bits << 8 | position) as uint32, or
    None where it cannot decide (rows over 256 keys, keys that tie, a key at the largest
    draw); ``padding`` [n, m] (optional) marks positions to treat as the padding key 2.0.

    Truncating a key in [0, 1) to its 24 bits never reorders two keys, it can only make
    them equal, which the tie test catches; the padding value 2.0 becomes the largest
    packed key, so it sorts after every key below it as in ``topk``."""
    if k.shape[2] > 1 << _POS_BITS or (k == _LARGEST_DRAW).any():
        return None  # (the largest draw would pack equal to the padding key)
    scaled = k * np.float32(1 << _UNIT_BITS)          # exact for torch.rand's draws
    if padding is not None:
        np.copyto(scaled, np.float32(_PAD_KEY), where=padding)
    else:
        np.minimum(scaled, np.float32(_PAD_KEY), out=scaled)
    packed = scaled.astype(np.uint32)
    packed <<= _POS_BITS
    packed |= np.arange(k.shape[2], dtype=np.uint32)
    packed.sort(axis=2)
    top = packed[..., :b + 1]
    key = top >> _POS_BITS
    if ((key[..., 1:] == key[..., :-1]) & (key[..., 1:] < _PAD_KEY)).any():
        return None
    return (top[..., :b] & ((1 << _POS_BITS) - 1)).astype(np.int64)


def train_vectorized(model: BatchedModel, theta: torch.Tensor, data_x: torch.Tensor,
                     data_y: torch.Tensor, plan: BatchPlan, lr: float, momentum: float = 0.0,
                     weight_decay: float = 0.0) -> torch.Tensor:
    """SGD from ``theta`` [d] (or one start per client, [n, d]) for every client of
    ``plan`` at once; returns the updates [n, d].

    Plain SGD (no momentum, no weight decay) of an MLP takes :func:`_train_mlp_sgd`, which
    fuses each layer's gradient into its update; every other case runs the model's
    ``loss_grad`` and the optimizer step on the flat ``[n, d]`` matrix."""
    if type(model) is BatchedMLP and not momentum and not weight_decay:
        return _train_mlp_sgd(model, theta, data_x, data_y, plan, lr)
    n = plan.rows.shape[1]
    W = theta.unsqueeze(0).repeat(n, 1) if theta.dim() == 1 else theta.clone()
    buf: torch.Tensor | None = None
    started = torch.zeros(n, 1, dtype=torch.bool, device=theta.device)
    counts = plan.mask.sum(dim=2)                                   # [steps, n]
    weights = plan.mask / counts.clamp_min(1).unsqueeze(2)          # mean loss per client
    actives = (counts > 0).unsqueeze(2)                             # [steps, n, 1]
    all_active = plan.full_steps
    if all_active is None:
        all_active = tuple(actives.all(dim=1).flatten().tolist())  # one host sync per plan
    for s in range(plan.steps):
        rows = plan.rows[s]
        active = actives[s]
        flat = rows.reshape(-1)
        x = data_x.index_select(0, flat).view(*rows.shape, *data_x.shape[1:])
        grad = model.loss_grad(W, x, data_y.index_select(0, flat).view(rows.shape), weights[s])
        if weight_decay:
            grad = grad + weight_decay * W
        if momentum:
            # torch.optim.SGD per client: buf = grad on its first step, then μ·buf + grad
            buf = grad if buf is None else torch.where(
                active, torch.where(started, momentum * buf + grad, grad), buf)
            started = started | active
            grad = buf
        stepped = torch.add(W, grad, alpha=-lr)
        W = stepped if all_active[s] else torch.where(active, stepped, W)
    return W - theta


def _train_mlp_sgd(model: BatchedMLP, theta: torch.Tensor, data_x: torch.Tensor,
                   data_y: torch.Tensor, plan: BatchPlan, lr: float) -> torch.Tensor:
    """Plain SGD of every client's MLP: the arithmetic of :meth:`BatchedMLP.loss_grad`
    followed by the SGD step, in few kernels per local step.

    The layers stay batched ``[n, out, in]`` tensors for the whole plan, and the steps run
    in :func:`byzbench.engine.mlp_steps.sgd_steps` (compiled by TorchScript on the CPU):
    each step's inputs are gathered just before it (gathering all steps' up front is one
    kernel fewer but slower: the larger working set falls out of cache); each weight
    gradient is applied by the product that computes it (``baddbmm_``: W ← W − lr·δᵀh, no
    gradient tensor). The output layer works on transposed logits ``[n, classes, B]``, so
    its softmax reduces across rows instead of along a handful of contiguous classes. When
    every sample weighs the same (every client a full batch at every step) the weight 1/B
    is folded into the products' scale. Results equal the generic path's to float rounding
    (a fused multiply-add, the order of a reduction); a client that sits a step out keeps
    its parameters exactly.

    ``theta``: every client's starting point [d], or one per client [n, d] (each row's
    update is then from its own start: several cells' clients in one call, as
    ``benchmarks/bench_cell_batching.py`` measures)."""
    n, steps, b = plan.clients, plan.steps, plan.rows.shape[2]
    start = theta.unsqueeze(0) if theta.dim() == 1 else theta
    params = [p.expand(n, *p.shape[1:]).clone() for p in model.unflatten(start)]
    uniform = plan.full_batches
    if uniform is None:
        uniform = plan.mask.device.type == "cpu" and bool(plan.mask.all())
    all_active = (True,) * steps if uniform else plan.full_steps
    counts = weights = None
    if not uniform:
        counts = plan.mask.sum(dim=2)                               # [steps, n]
        weights = (plan.mask / counts.clamp_min(1).unsqueeze(2)).unsqueeze(2)
        if all_active is None:
            all_active = tuple((counts > 0).all(dim=1).tolist())    # one host sync per plan
    ys = data_y.index_select(0, plan.rows.reshape(-1)).view(steps, n, 1, b)
    minus_one = torch.full((1, 1, 1), -1.0, dtype=theta.dtype, device=theta.device
                           ).expand(n, 1, b)
    run_sgd_steps(params, data_x, plan.rows, ys, minus_one, weights, counts, all_active,
                  -lr / b if uniform else -lr)
    return torch.cat([p.reshape(n, -1) for p in params], dim=1).sub_(theta)


def train_chunked(model: BatchedModel, theta: torch.Tensor, data_x: torch.Tensor,
                  data_y: torch.Tensor, plan: BatchPlan, lr: float, momentum: float = 0.0,
                  weight_decay: float = 0.0, chunk: int | None = None) -> torch.Tensor:
    """:func:`train_vectorized` on slices of at most ``chunk`` clients; the updates [n, d].

    ``plan`` may live on the host: each slice is then moved to ``theta``'s device just before
    it trains. Clients never interact, so the result equals the unchunked one (up to the
    floating-point order of a batched matrix product).
    """
    n = plan.clients
    device = theta.device
    if chunk is None or chunk >= n:
        return train_vectorized(model, theta, data_x, data_y, plan.to(device), lr, momentum,
                                weight_decay)
    out = torch.empty(n, theta.shape[0], dtype=theta.dtype, device=device)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        part = plan.slice(start, stop).to(device)
        out[start:stop] = train_vectorized(model, theta, data_x, data_y, part, lr, momentum,
                                           weight_decay)
    return out


def train_reference(model: BatchedModel, theta: torch.Tensor, data_x: torch.Tensor,
                    data_y: torch.Tensor, plan: BatchPlan, lr: float, momentum: float = 0.0,
                    weight_decay: float = 0.0) -> torch.Tensor:
    """The same training, one client after another with ``nn.Module`` and ``optim.SGD``."""
    updates = []
    for i in range(plan.rows.shape[1]):
        module = model.reference_module(theta).to(theta.device)
        opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum,
                              weight_decay=weight_decay)
        for s in range(plan.steps):
            rows = plan.rows[s, i][plan.mask[s, i]]
            if rows.numel() == 0:
                continue
            opt.zero_grad()
            F.cross_entropy(module(data_x[rows]), data_y[rows]).backward()
            opt.step()
        flat = torch.nn.utils.parameters_to_vector(module.parameters()).detach()
        updates.append(flat - theta)
    return torch.stack(updates)


@torch.no_grad()
def evaluate_sums(model: BatchedModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                  chunk: int = 2048) -> torch.Tensor:
    """[2] tensor on ``theta``'s device: (correct predictions, summed cross-entropy) — no
    host sync, so a caller can fetch it together with its other per-round numbers."""
    W = theta.unsqueeze(0)
    correct = torch.zeros((), device=theta.device)
    total_loss = torch.zeros((), device=theta.device)
    for start in range(0, x.shape[0], chunk):
        logits = model.forward(W, x[start:start + chunk].unsqueeze(0))[0]
        yb = y[start:start + chunk]
        correct += (logits.argmax(dim=1) == yb).sum()
        total_loss += F.cross_entropy(logits, yb, reduction="sum")
    return torch.stack([correct, total_loss])


def evaluate(model: BatchedModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             chunk: int = 2048) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the model ``theta`` [d] on ``x``, ``y``."""
    if x.shape[0] == 0:
        return float("nan"), float("nan")
    correct, total_loss = evaluate_sums(model, theta, x, y, chunk).tolist()
    n = x.shape[0]
    return correct / n, total_loss / n


@torch.no_grad()
def predict(model: BatchedModel, theta: torch.Tensor, x: torch.Tensor, chunk: int = 2048
            ) -> torch.Tensor:
    """Predicted labels of the model ``theta`` on ``x``."""
    W = theta.unsqueeze(0)
    out = [model.forward(W, x[s:s + chunk].unsqueeze(0))[0].argmax(dim=1)
           for s in range(0, x.shape[0], chunk)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)
