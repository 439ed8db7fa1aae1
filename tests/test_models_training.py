"""Batched models and vectorized training against plain torch.nn / torch.optim."""

from __future__ import annotations

import pickle

import pytest
import torch

from byzbench.engine import mlp_steps
from byzbench.engine.training import (
    BatchPlan,
    evaluate,
    plan_batches,
    smallest_sorted,
    train_reference,
    train_vectorized,
)
from byzbench.models import BatchedCNN, BatchedMLP, BatchedModel
from byzbench.registry import MODELS

MODELS_UNDER_TEST = [
    ("logreg", lambda: BatchedMLP(64, [], 10), (1, 8, 8)),
    ("mlp", lambda: BatchedMLP(64, [32, 16], 10), (1, 8, 8)),
    ("cnn-8x8", lambda: BatchedCNN((1, 8, 8), [4, 8], 16, 10), (1, 8, 8)),
    ("cnn-cifar", lambda: BatchedCNN((3, 32, 32), [4, 8], 16, 10), (3, 32, 32)),
    ("cnn-valid-28", lambda: BatchedCNN((1, 28, 28), [3, 5], 8, 10, padding=0), (1, 28, 28)),
]


def _clients(counts: list[int], total: int, gen: torch.Generator):
    perm = torch.randperm(total, generator=gen)
    index = torch.zeros(len(counts), max(counts), dtype=torch.long)
    start = 0
    for i, c in enumerate(counts):
        index[i, :c] = perm[start:start + c]
        start += c
    return index, torch.tensor(counts)


@pytest.mark.parametrize("name,make,shape", MODELS_UNDER_TEST)
def test_batched_forward_equals_torch_module(name, make, shape):
    gen = torch.Generator().manual_seed(1)
    model = make()
    W = torch.stack([model.init(gen) for _ in range(3)])
    x = torch.randn(3, 4, *shape, generator=gen)
    out = model.forward(W, x)
    for i in range(3):
        ref = model.reference_module(W[i])(x[i])
        assert torch.allclose(out[i], ref, atol=1e-5)
    assert model.dim == sum(p.numel() for p in model.reference_module(W[0]).parameters())


@pytest.mark.parametrize("name,make,shape", MODELS_UNDER_TEST)
@pytest.mark.parametrize("mode", [{"steps": 4, "epochs": None}, {"steps": None, "epochs": 2}])
@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 1e-3)])
def test_vectorized_training_equals_per_client_reference(name, make, shape, mode, momentum,
                                                         weight_decay):
    """The issue's check: both paths produce the same updates to 1e-5, with clients of
    different sizes (some smaller than a batch) so step masks matter."""
    gen = torch.Generator().manual_seed(2)
    model = make()
    x = torch.randn(120, *shape, generator=gen)
    y = torch.randint(0, 10, (120,), generator=gen)
    index, counts = _clients([3, 40, 17, 60], 120, gen)
    theta = model.init(gen)
    plan = plan_batches(index, counts, 16, generator=gen, **mode)
    vec = train_vectorized(model, theta, x, y, plan, 0.1, momentum, weight_decay)
    ref = train_reference(model, theta, x, y, plan, 0.1, momentum, weight_decay)
    assert vec.shape == (4, model.dim)
    assert vec.abs().max() > 1e-3  # training moved the parameters
    assert torch.allclose(vec, ref, atol=1e-5), (vec - ref).abs().max()


class _GenericMLP(BatchedMLP):
    """The MLP through the generic trainer (``loss_grad`` + an SGD step on [n, d])."""


@pytest.mark.parametrize("hidden", [[], [32], [32, 16]])
@pytest.mark.parametrize("mode", [{"steps": 4, "epochs": None}, {"steps": None, "epochs": 2}])
def test_fused_mlp_sgd_equals_the_generic_path(hidden, mode):
    """Plain SGD of an MLP takes the fused trainer; it must give the generic path's updates
    to float rounding, and a client without data (it sits every step out) stays exactly
    where it started."""
    gen = torch.Generator().manual_seed(5)
    fused, generic = BatchedMLP(64, hidden, 10), _GenericMLP(64, hidden, 10)
    x = torch.randn(200, 64, generator=gen)
    y = torch.randint(0, 10, (200,), generator=gen)
    index, counts = _clients([3, 40, 0, 17, 60], 200, gen)
    theta = fused.init(gen)
    plan = plan_batches(index, counts, 16, generator=gen, **mode)
    a = train_vectorized(fused, theta, x, y, plan, 0.1)
    b = train_vectorized(generic, theta, x, y, plan, 0.1)
    assert a.abs().max() > 1e-3
    assert torch.allclose(a, b, atol=1e-6, rtol=0), (a - b).abs().max()
    assert torch.equal(a[2], torch.zeros_like(a[2]))


def test_fused_mlp_sgd_with_full_batches_folds_the_weight_and_matches():
    """Full batches everywhere: the plan says every step is full, the weight 1/B is folded
    into the update's scale, and the updates still match the generic path."""
    gen = torch.Generator().manual_seed(6)
    fused, generic = BatchedMLP(64, [64], 10), _GenericMLP(64, [64], 10)
    x = torch.randn(400, 64, generator=gen)
    y = torch.randint(0, 10, (400,), generator=gen)
    index, counts = _clients([67, 68, 70, 65, 66], 400, gen)
    theta = fused.init(gen)
    plan = plan_batches(index, counts, 32, 5, None, gen)
    assert plan.full_steps == (True,) * 5 and bool(plan.mask.all())
    a = train_vectorized(fused, theta, x, y, plan, 0.1)
    b = train_vectorized(generic, theta, x, y, plan, 0.1)
    assert a.abs().max() > 1e-3
    assert torch.allclose(a, b, atol=1e-6, rtol=0), (a - b).abs().max()


@pytest.mark.parametrize("hidden", [[], [32], [32, 16]])
@pytest.mark.parametrize("mode", [{"steps": 4, "epochs": None}, {"steps": None, "epochs": 2},
                                  {"steps": 5, "epochs": None, "full": True}])
def test_compiled_sgd_steps_are_bitwise_the_python_steps(hidden, mode):
    """TorchScript runs the same operators in the same order: the updates are bitwise
    those of the same function run as Python (uneven clients, a client without data,
    epochs with idle steps, and full batches with the folded weight)."""
    mode = dict(mode)
    full = mode.pop("full", False)
    gen = torch.Generator().manual_seed(9)
    model = BatchedMLP(64, hidden, 10)
    x = torch.randn(400, 64, generator=gen)
    y = torch.randint(0, 10, (400,), generator=gen)
    sizes = [67, 68, 70, 65, 66] if full else [3, 40, 0, 17, 60]
    plan = plan_batches(*_clients(sizes, 400, gen), 32 if full else 16, generator=gen, **mode)
    assert bool(plan.mask.all()) == full
    theta = model.init(gen)
    compiled = mlp_steps.compiled_sgd_steps()
    assert compiled is not mlp_steps.sgd_steps  # TorchScript compiled it on this torch
    runs = []
    for steps in (compiled, mlp_steps.sgd_steps):
        mlp_steps._COMPILED = steps       # the trainer calls whichever is installed
        try:
            runs.append(train_vectorized(model, theta, x, y, plan, 0.1))
        finally:
            mlp_steps._COMPILED = compiled
    assert runs[0].abs().max() > 1e-3
    assert torch.equal(runs[0], runs[1])


def test_an_integer_learning_rate_trains_as_its_float():
    """The compiled steps take a float scale: an int lr (the Python API allows one) is
    converted, on uneven clients (scale −lr) as on full batches (−lr/B)."""
    gen = torch.Generator().manual_seed(11)
    model = BatchedMLP(64, [32], 10)
    x = torch.randn(300, 64, generator=gen)
    y = torch.randint(0, 10, (300,), generator=gen)
    theta = model.init(gen)
    for sizes in ([30, 50, 9], [80, 90, 100]):
        plan = plan_batches(*_clients(sizes, 300, gen), 16, 3, None, gen)
        a = train_vectorized(model, theta, x, y, plan, 1)
        assert a.abs().max() > 1e-3
        assert torch.equal(a, train_vectorized(model, theta, x, y, plan, 1.0))


def test_training_runs_as_python_where_torchscript_cannot_compile(monkeypatch):
    """A torch without TorchScript: the same function runs uncompiled, same updates."""
    gen = torch.Generator().manual_seed(10)
    model = BatchedMLP(64, [32], 10)
    x = torch.randn(200, 64, generator=gen)
    y = torch.randint(0, 10, (200,), generator=gen)
    plan = plan_batches(*_clients([30, 50, 20], 200, gen), 16, 3, None, gen)
    theta = model.init(gen)
    expected = train_vectorized(model, theta, x, y, plan, 0.1)

    def no_torchscript(fn):
        raise RuntimeError("TorchScript is not available")

    monkeypatch.setattr(torch.jit, "script", no_torchscript)
    monkeypatch.setattr(mlp_steps, "_COMPILED", None)
    assert mlp_steps.compiled_sgd_steps() is mlp_steps.sgd_steps
    assert torch.equal(train_vectorized(model, theta, x, y, plan, 0.1), expected)


@pytest.mark.parametrize("fused", [True, False])
def test_one_start_per_client_equals_separate_calls(fused):
    """theta [n, d]: each row trains from its own start (two "cells" in one call); the
    updates equal those of one call per start, on the fused and the generic path."""
    gen = torch.Generator().manual_seed(8)
    model = BatchedMLP(64, [32], 10) if fused else _GenericMLP(64, [32], 10)
    x = torch.randn(300, 64, generator=gen)
    y = torch.randint(0, 10, (300,), generator=gen)
    starts = [model.init(gen), model.init(gen)]
    assert not torch.equal(starts[0], starts[1])
    plans = [plan_batches(*_clients(c, 300, gen), 16, 3, None, gen)
             for c in ([40, 50, 30], [60, 20, 45])]
    joint = BatchPlan(rows=torch.cat([p.rows for p in plans], dim=1),
                      mask=torch.cat([p.mask for p in plans], dim=1))
    rows = torch.cat([s.unsqueeze(0).expand(3, -1) for s in starts])
    together = train_vectorized(model, rows, x, y, joint, 0.1)
    for i, (start, plan) in enumerate(zip(starts, plans)):
        alone = train_vectorized(model, start, x, y, plan, 0.1)
        assert alone.abs().max() > 1e-3
        assert torch.allclose(together[3 * i:3 * i + 3], alone, atol=1e-6, rtol=0)


def test_mlp_analytic_gradient_equals_autograd():
    gen = torch.Generator().manual_seed(3)
    model = BatchedMLP(20, [8, 8], 5)
    W = torch.stack([model.init(gen) for _ in range(3)])
    x = torch.randn(3, 7, 20, generator=gen)
    y = torch.randint(0, 5, (3, 7), generator=gen)
    weights = torch.rand(3, 7, generator=gen)
    analytic = model.loss_grad(W, x, y, weights)
    autograd = super(BatchedMLP, model).loss_grad(W, x, y, weights)
    assert torch.allclose(analytic, autograd, atol=1e-6)


CNN_SHAPES = [
    ("papers-cnn", lambda: BatchedCNN((1, 28, 28), [30, 50], 100, 10, padding=0), (1, 28, 28)),
    ("cnn-8x8-same", lambda: BatchedCNN((1, 8, 8), [4, 8], 16, 10), (1, 8, 8)),
    ("cnn-cifar", lambda: BatchedCNN((3, 32, 32), [4, 8], 16, 10), (3, 32, 32)),
    ("cnn-3-blocks", lambda: BatchedCNN((1, 28, 28), [3, 5, 6], 8, 10), (1, 28, 28)),
    ("cnn-odd", lambda: BatchedCNN((2, 9, 11), [3], 5, 10, padding=0), (2, 9, 11)),
]


@pytest.mark.parametrize("name,make,shape", CNN_SHAPES)
def test_cnn_analytic_gradient_equals_autograd_through_grouped_conv(name, make, shape):
    """The GEMM path against the previous one (autograd through :meth:`forward`, one grouped
    convolution over clients), with blank images and half-blank ones: pooling windows that
    tie exactly, where the gradient must go to one slot only, as max_pool2d sends it."""
    gen = torch.Generator().manual_seed(6)
    model = make()
    W = torch.stack([model.init(gen) for _ in range(3)])
    W[:, model.sizes[0]:sum(model.sizes[:2])] = 0.3          # positive first-conv bias
    x = torch.randn(3, 5, *shape, generator=gen)
    x[0, :2] = 0.0
    x[1, 0, :, : shape[1] // 2] = 0.0
    y = torch.randint(0, 10, (3, 5), generator=gen)
    weights = torch.rand(3, 5, generator=gen)
    analytic = model.loss_grad(W, x, y, weights)
    autograd = BatchedModel.loss_grad(model, W, x, y, weights)
    assert analytic.shape == (3, model.dim)
    assert autograd[:, : model.sizes[0]].abs().max() > 1e-3   # conv weights get gradient
    assert torch.allclose(analytic, autograd, rtol=1e-5, atol=1e-6), \
        (analytic - autograd).abs().max()


def test_cnn_tied_pooling_window_sends_gradient_to_one_slot():
    """A blank image through a 'valid' conv is its bias everywhere: every 2×2 window ties.
    With one conv block, the bias gradient is then Σ over pooled cells of the upstream
    gradient — one slot each (4× that if every tied slot took it)."""
    model = BatchedCNN((1, 6, 6), [1], 1, 2, padding=0)     # 6 → 4 → 2×2 pooled, 4 features
    theta = torch.zeros(model.dim)
    w, b, w1, b1, w2, b2 = torch.split(theta, model.sizes)
    b.fill_(0.5)                                            # conv bias: output 0.5 everywhere
    w1.fill_(1.0)                                           # hidden = relu(4 · 0.5) = 2
    w2.copy_(torch.tensor([1.0, -1.0]))                     # logits (2, −2)
    x = torch.zeros(1, 1, 1, 6, 6)
    y = torch.tensor([[1]])
    grad = model.loss_grad(theta.unsqueeze(0), x, y, torch.ones(1, 1))[0]
    p = torch.softmax(torch.tensor([2.0, -2.0]), 0)
    dhidden = float((p[0] - 0.0) * 1.0 + (p[1] - 1.0) * -1.0)  # ∂CE/∂hidden through w2
    gw, gb = torch.split(grad, model.sizes)[:2]
    assert gb.item() == pytest.approx(4 * dhidden, rel=1e-5)  # 4 pooled cells × w1 = 1
    assert gw.abs().max() == 0                               # blank input: no weight gradient


def test_cnn_scratch_buffers_do_not_leak_between_calls_or_into_pickles():
    gen = torch.Generator().manual_seed(7)
    model = BatchedCNN((1, 12, 12), [4, 6], 8, 10, padding=0)
    W = torch.stack([model.init(gen) for _ in range(4)])
    x = torch.randn(4, 6, 1, 12, 12, generator=gen)
    y = torch.randint(0, 10, (4, 6), generator=gen)
    weights = torch.full((4, 6), 1 / 6)
    first = model.loss_grad(W, x, y, weights)
    kept = first.clone()
    small = model.loss_grad(W[:2], x[:2, :3], y[:2, :3], weights[:2, :3])
    again = model.loss_grad(W, x, y, weights)
    assert torch.equal(first, kept)                          # not overwritten by later calls
    assert torch.equal(again, first)
    assert torch.allclose(small, BatchedModel.loss_grad(model, W[:2], x[:2, :3], y[:2, :3],
                                                        weights[:2, :3]), atol=1e-6)
    assert len(pickle.dumps(model)) < 10_000                 # scratch is not pickled


def test_batch_plan_steps_draws_without_replacement_within_client():
    gen = torch.Generator().manual_seed(4)
    index, counts = _clients([5, 50], 55, gen)
    plan = plan_batches(index, counts, 8, steps=3, epochs=None, generator=gen)
    assert plan.rows.shape == (3, 2, 8)
    # client 0 has 5 samples: each step uses all 5 once, the rest masked
    assert plan.mask[:, 0].sum(dim=1).tolist() == [5, 5, 5]
    for s in range(3):
        rows0 = plan.rows[s, 0][plan.mask[s, 0]]
        assert sorted(rows0.tolist()) == sorted(index[0, :5].tolist())
        rows1 = plan.rows[s, 1][plan.mask[s, 1]]
        assert len(set(rows1.tolist())) == 8
        assert set(rows1.tolist()) <= set(index[1, :50].tolist())


def test_smallest_sorted_is_topk_whatever_the_ties():
    """The batch plan's numpy fast path gives topk's indices: on distinct keys the same
    ones, and where keys tie (here forced by rounding) it hands over to topk; padding keys
    (2.0) may come in any order, as they all index the padding row."""
    gen = torch.Generator().manual_seed(9)
    forced_ties = 0
    for t in range(600):
        n, m = int(torch.randint(1, 30, (1,), generator=gen)), \
            int(torch.randint(1, 120, (1,), generator=gen))
        b = int(torch.randint(1, m + 1, (1,), generator=gen))
        keys = torch.rand(5, n, m if t % 4 else m + 200, generator=gen)  # rows over 256
        m = keys.shape[2]
        b = min(b, m)
        if t % 3 == 0:  # ties on the draws' own grid (multiples of 2^-24), and off it
            keys = (keys * (64 if t % 2 else 50)).floor() / (64 if t % 2 else 50)
        keys.masked_fill_((torch.rand(n, m, generator=gen) < 0.2).unsqueeze(0), 2.0)
        ref = keys.topk(b, dim=2, largest=False, sorted=True).indices
        got = smallest_sorted(keys, b)
        valid = torch.gather(keys, 2, ref) < 2.0
        assert torch.equal(torch.gather(keys, 2, got), torch.gather(keys, 2, ref))
        assert torch.equal(torch.where(valid, got, -1), torch.where(valid, ref, -1))
        forced_ties += int(t % 3 == 0)
    assert forced_ties > 0


def test_host_batch_plan_is_the_topk_plan_of_the_same_draws():
    """The host plan (numpy, packed sort) against the plan's definition: the same
    ``torch.rand`` keys, padding set to 2.0, ``topk`` of each row, rows gathered from the
    index table; uneven, empty and long (> 256) clients, batches larger than a client."""
    gen = torch.Generator().manual_seed(11)
    for t in range(300):
        n = int(torch.randint(1, 25, (1,), generator=gen))
        high = 400 if t % 5 == 0 else 80
        counts = torch.randint(0 if t % 6 == 0 else 1, high, (n,), generator=gen)
        max_n = max(int(counts.max()), 1)
        index = torch.randint(0, 10_000, (n, max_n), generator=gen)
        index[torch.arange(max_n) >= counts.unsqueeze(1)] = 0
        batch = int(torch.randint(1, 70, (1,), generator=gen))
        steps = int(torch.randint(1, 6, (1,), generator=gen))
        seed = int(torch.randint(0, 2**31, (1,), generator=gen))
        plan = plan_batches(index, counts, batch, steps, None,
                            torch.Generator().manual_seed(seed))
        b = min(batch, max_n)
        keys = torch.rand(steps, n, max_n, generator=torch.Generator().manual_seed(seed))
        keys.masked_fill_(torch.arange(max_n) >= counts.view(1, n, 1), 2.0)
        order = keys.topk(b, dim=2, largest=False, sorted=True).indices
        mask = torch.arange(b).expand(steps, n, b) < counts.view(1, n, 1)
        rows = torch.gather(index.expand(steps, n, max_n), 2, order)
        assert torch.equal(plan.mask, mask)
        assert torch.equal(torch.where(mask, plan.rows, -1), torch.where(mask, rows, -1))
        assert plan.full_steps == (int(counts.min()) > 0,) * steps
        assert plan.full_batches == (int(counts.min()) >= b)
    # no client holds a sample: an empty plan, every step sat out
    empty = plan_batches(torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, dtype=torch.long),
                         8, 2, None, gen)
    assert empty.rows.shape == empty.mask.shape == (2, 3, 0)
    assert empty.full_steps == (False, False)


def test_batch_plan_epochs_visit_every_sample_once_per_epoch():
    gen = torch.Generator().manual_seed(5)
    index, counts = _clients([7, 20], 27, gen)
    plan = plan_batches(index, counts, 6, steps=None, epochs=2, generator=gen)
    per_epoch = plan.steps // 2
    for e in range(2):
        sl = slice(e * per_epoch, (e + 1) * per_epoch)
        for c in range(2):
            rows = plan.rows[sl, c][plan.mask[sl, c]]
            assert sorted(rows.tolist()) == sorted(index[c, :counts[c]].tolist())


def test_evaluate_counts_correct_predictions():
    model = BatchedMLP(2, [], 2)
    # logits = x @ I: predicts the larger coordinate
    theta = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    x = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0], [1.0, 0.0]])
    y = torch.tensor([0, 1, 1, 0])
    acc, loss = evaluate(model, theta, x, y)
    assert acc == pytest.approx(0.75)
    assert loss > 0


def test_model_registry_builds_each_model():
    for name in ("logreg", "mlp", "cnn"):
        cls = MODELS.get(name)
        model = cls(cls.Params()).build((1, 8, 8), 10)
        assert model.dim > 0


def test_cnn_padding_zero_is_the_papers_cnn_and_the_default_is_unchanged():
    """FLTrust's / Fang et al.'s CNN: 3×3 'valid' convolutions with 30 and 50 channels, each
    followed by 2×2 max-pooling (28 → 26 → 13 → 11 → 5), a 100-unit dense layer."""
    cls = MODELS.get("cnn")
    paper = cls(cls.Params(channels=[30, 50], hidden=100, padding=0)).build((1, 28, 28), 10)
    assert paper.flat == 50 * 5 * 5
    assert paper.dim == (30 * 9 + 30) + (50 * 30 * 9 + 50) + (100 * 1250 + 100) + (10 * 100 + 10)
    module = paper.reference_module(paper.init(torch.Generator().manual_seed(0)))
    assert [m.padding for m in module if isinstance(m, torch.nn.Conv2d)] == [(0, 0), (0, 0)]
    default = cls(cls.Params()).build((1, 28, 28), 10)   # channels [16, 32], hidden 64, 'same'
    assert cls.Params().padding == 1
    assert default.flat == 32 * 7 * 7
    assert default.dim == (16 * 9 + 16) + (32 * 16 * 9 + 32) + (64 * 1568 + 64) + (10 * 64 + 10)
    with pytest.raises(ValueError, match="too small"):
        BatchedCNN((1, 4, 4), [2, 2], 4, 10, padding=0)   # 4 → 2 → 1 → 0
