"""Models that evaluate many clients at once from one flat ``[n, d]`` parameter matrix.

Each model lays its parameters out exactly as the equivalent ``torch.nn`` module's
``parameters()`` would be flattened, so a row of the matrix is a client's model, the
difference of two rows is an update, and :meth:`BatchedModel.reference_module` rebuilds a
plain ``nn.Module`` from a row (the per-client reference path and the tests use it).
Linear layers become batched matrix products; the CNN's forward pass is one grouped
convolution over all clients, its training gradient batched im2col GEMMs with an analytic
backward pass — no BatchNorm, so nothing couples the samples of a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from byzbench.registry import MODELS, Component, Params


class BatchedModel:
    """Forward pass of ``n`` models with parameters stacked as rows of ``W`` [n, d]."""

    def __init__(self, shapes: Sequence[tuple[int, ...]], fan_ins: Sequence[int]) -> None:
        self.shapes = [tuple(s) for s in shapes]
        self.fan_ins = list(fan_ins)
        self.sizes = [math.prod(s) for s in self.shapes]
        self.dim = sum(self.sizes)

    def init(self, generator: torch.Generator) -> torch.Tensor:
        """Initial parameters [d]: U(−1/√fan_in, 1/√fan_in) per tensor, torch's default rule."""
        parts = []
        for size, fan_in in zip(self.sizes, self.fan_ins):
            bound = 1.0 / math.sqrt(fan_in)
            parts.append((torch.rand(size, generator=generator) * 2 - 1) * bound)
        return torch.cat(parts)

    def unflatten(self, W: torch.Tensor) -> list[torch.Tensor]:
        """Views of ``W`` [n, d] as the per-client parameter tensors [n, *shape]."""
        n = W.shape[0]
        return [p.view(n, *s) for p, s in zip(W.split(self.sizes, dim=1), self.shapes)]

    def forward(self, W: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits [n, B, classes] of client i's model on its batch ``x[i]`` ([n, B, *input])."""
        raise NotImplementedError

    def loss_grad(self, W: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
        """∂/∂W of Σ_i Σ_b weights[i, b] · CE(f(W_i, x[i, b]), y[i, b]), shape [n, d].

        With ``weights`` = mask / count this is each client's mean-loss gradient in its row
        (the rows of W do not interact). The default runs autograd; models may override it
        with an analytic backward pass.
        """
        W = W.detach().requires_grad_(True)
        logits = self.forward(W, x)
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                 reduction="none")
        (grad,) = torch.autograd.grad((losses * weights.reshape(-1)).sum(), W)
        return grad

    def reference_module(self, theta: torch.Tensor) -> nn.Module:
        """A plain ``nn.Module`` holding the parameters ``theta`` [d]."""
        module = self._module()
        nn.utils.vector_to_parameters(theta.detach().clone(), module.parameters())
        return module

    def _module(self) -> nn.Module:
        raise NotImplementedError


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x [n, B, in], w [n, out, in], b [n, out] → [n, B, out]."""
    return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))


def _softmax_last(h: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, computed in place on a fresh tensor: for the
    handful of classes here torch's fused kernel is ~4× slower than these three ops."""
    e = (h - h.amax(dim=-1, keepdim=True)).exp_()
    return e.div_(e.sum(dim=-1, keepdim=True))


class BatchedMLP(BatchedModel):
    """Fully connected ReLU network; with no hidden layer, multinomial logistic regression."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        self.widths = [in_features, *hidden, num_classes]
        shapes: list[tuple[int, ...]] = []
        fan_ins: list[int] = []
        for fan_in, fan_out in zip(self.widths[:-1], self.widths[1:]):
            shapes += [(fan_out, fan_in), (fan_out,)]
            fan_ins += [fan_in, fan_in]
        super().__init__(shapes, fan_ins)

    def forward(self, W: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        params = self.unflatten(W)
        h = x.reshape(x.shape[0], x.shape[1], -1)
        layers = len(params) // 2
        for i in range(layers):
            h = _linear(h, params[2 * i], params[2 * i + 1])
            if i < layers - 1:
                h = torch.relu(h)
        return h

    def loss_grad(self, W: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
        """Analytic backward pass through the batched layers (no autograd graph)."""
        params = self.unflatten(W)
        layers = len(params) // 2
        h = x.reshape(x.shape[0], x.shape[1], -1)
        inputs, pre = [], []
        for i in range(layers):
            inputs.append(h)
            a = _linear(h, params[2 * i], params[2 * i + 1])
            pre.append(a)
            h = torch.relu(a) if i < layers - 1 else a
        # d(weighted CE)/d(logits) = w · (softmax − onehot)
        delta = _softmax_last(h)
        delta.scatter_add_(-1, y.unsqueeze(-1), -torch.ones_like(delta[..., :1]))
        delta.mul_(weights.unsqueeze(-1))
        grads: list[torch.Tensor] = []
        for i in reversed(range(layers)):
            grads.append(delta.sum(dim=1))                              # bias [n, out]
            grads.append(torch.bmm(delta.transpose(1, 2), inputs[i]).flatten(1))  # [n, out·in]
            if i > 0:
                delta = torch.bmm(delta, params[2 * i]) * (pre[i - 1] > 0)
        return torch.cat(grads[::-1], dim=1)

    def _module(self) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(zip(self.widths[:-1], self.widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(self.widths) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)


class BatchedCNN(BatchedModel):
    """Two 3×3 conv + ReLU + 2×2 max-pool blocks, then a ReLU hidden layer and the output."""

    def __init__(self, input_shape: tuple[int, ...], channels: Sequence[int], hidden: int,
                 num_classes: int, padding: int = 1) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"cnn needs image input [C, H, W], got shape {input_shape}")
        c, h, w = input_shape
        self.input_shape = input_shape
        self.channels = [c, *channels]
        self.padding = padding
        shapes: list[tuple[int, ...]] = []
        fan_ins: list[int] = []
        for cin, cout in zip(self.channels[:-1], self.channels[1:]):
            shapes += [(cout, cin, 3, 3), (cout,)]
            fan_ins += [cin * 9, cin * 9]
            h, w = (h + 2 * padding - 2) // 2, (w + 2 * padding - 2) // 2
        if h < 1 or w < 1:
            raise ValueError(f"input {input_shape} is too small for {len(channels)} pooling stages")
        self.flat = self.channels[-1] * h * w
        self.hidden, self.num_classes = hidden, num_classes
        shapes += [(hidden, self.flat), (hidden,), (num_classes, hidden), (num_classes,)]
        fan_ins += [self.flat, self.flat, hidden, hidden]
        super().__init__(shapes, fan_ins)
        self._scratch: dict[str, torch.Tensor] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_scratch": {}}   # scratch buffers are not state

    def forward(self, W: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        n, batch = x.shape[0], x.shape[1]
        params = self.unflatten(W)
        # clients become channel groups: [n, B, C, H, W] → [B, n·C, H, W]
        h = x.transpose(0, 1).reshape(batch, n * x.shape[2], *x.shape[3:])
        convs = len(self.channels) - 1
        for i in range(convs):
            w, b = params[2 * i], params[2 * i + 1]
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), b.reshape(-1), padding=self.padding,
                         groups=n)
            h = F.max_pool2d(torch.relu(h), 2)
        h = h.reshape(batch, n, -1).transpose(0, 1)  # [n, B, flat]
        w1, b1, w2, b2 = params[2 * convs:]
        return _linear(torch.relu(_linear(h, w1, b1)), w2, b2)

    def _buffer(self, key: str, shape: tuple[int, ...], like: torch.Tensor,
                dtype: torch.dtype | None = None) -> torch.Tensor:
        """A scratch tensor kept between calls: a fresh multi-hundred-MB allocation costs
        more in page faults than the arithmetic that fills it (CPU allocations are not cached)."""
        dtype = dtype or like.dtype
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < math.prod(shape) or buf.dtype != dtype \
                or buf.device != like.device:
            buf = torch.empty(math.prod(shape), dtype=dtype, device=like.device)
            self._scratch[key] = buf
        return buf[:math.prod(shape)].view(shape)

    def loss_grad(self, W: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
        """Analytic backward pass, each convolution as batched GEMMs over clients.

        Each convolution is one ``baddbmm`` of its input patches (im2col, built from the
        channel-major activations [n, C, B, H, W]) by the client's kernel [n, 9·cin, cout],
        computed only at the positions that 2×2 pooling keeps; its output is channels-last.
        Pooling (``max_pool2d`` on the channels-last map) comes before the ReLU: max∘relu = relu∘max, and max_pool2d's first-maximum index is
        the same either way wherever the ReLU passes a gradient, so the gradient equals
        autograd's through :meth:`forward` up to float rounding, ties included. A
        convolution's input gradient is one GEMM for all taps, each tap's block then added
        to a shifted block of the input (col2im). Large intermediates live in scratch
        buffers kept between calls (a fresh multi-hundred-MB tensor costs more in page
        faults than its arithmetic); the returned gradient is always a fresh tensor.
        """
        n, batch = x.shape[0], x.shape[1]
        params = self.unflatten(W)
        convs = len(self.channels) - 1
        pad = self.padding
        h = x.transpose(1, 2)                          # channel-major [n, C, B, H, W]
        saved = []
        for i in range(convs):
            cin, cout = self.channels[i], self.channels[i + 1]
            w, b = params[2 * i], params[2 * i + 1]
            H, Wd = h.shape[3] + 2 * pad, h.shape[4] + 2 * pad
            if pad:
                hp = self._buffer(f"pad{i}", (n, cin, batch, H, Wd), x)
                hp.zero_()
                hp[..., pad:H - pad, pad:Wd - pad].copy_(h)
            else:
                hp = h
            hq, wq = (H - 2) // 2, (Wd - 2) // 2
            rows = 4 * batch * hq * wq
            # patches stored transposed, [n, (kh, kw, cin), (B, row, col)]: copied in runs
            # of image columns, and the faster orientation of both products that read them
            sN, sC, sB, sH, sW = hp.stride()
            size = (n, 3, 3, cin, batch, 2 * hq, 2 * wq)
            patches_t = self._buffer(f"col{i}", (n, 9 * cin, rows), x)
            patches_t.view(size).copy_(hp.as_strided(size, (sN, sH, sW, sC, sB, sH, sW)))
            wm = w.permute(0, 3, 4, 2, 1).reshape(n, 9 * cin, cout)    # rows (kh, kw, cin)
            out = self._buffer(f"out{i}", (n, rows, cout), x)
            torch.baddbmm(b.unsqueeze(1), patches_t.transpose(1, 2), wm, out=out)
            # max_pool2d on the channels-last map [n·B, cout, 2hq, 2wq] (an NCHW view)
            conv = out.view(n * batch, 2 * hq, 2 * wq, cout).permute(0, 3, 1, 2)
            pooled = self._buffer(f"pool{i}", (n, batch, hq, wq, cout), x)
            index = self._buffer(f"index{i}", pooled.shape, x, torch.long)
            torch.ops.aten.max_pool2d_with_indices.out(
                conv, [2, 2], [2, 2], [0, 0], [1, 1], False,
                out=pooled.view(n * batch, hq, wq, cout).permute(0, 3, 1, 2),
                indices=index.view(n * batch, hq, wq, cout).permute(0, 3, 1, 2))
            saved.append((hp, patches_t, wm, out, conv, pooled, index))
            h = torch.clamp_min(pooled.permute(0, 4, 1, 2, 3), 0.0,
                                out=self._buffer(f"relu{i}", (n, cout, batch, hq, wq), x))
        flat = h.transpose(1, 2).reshape(n, batch, -1)          # torch's [C, H, W] order
        w1, b1, w2, b2 = params[2 * convs:]
        a1 = _linear(flat, w1, b1)
        z1 = torch.relu(a1)
        delta = _softmax_last(_linear(z1, w2, b2))
        delta.scatter_add_(-1, y.unsqueeze(-1), -torch.ones_like(delta[..., :1]))
        delta.mul_(weights.unsqueeze(-1))
        grads = [delta.sum(dim=1), torch.bmm(delta.transpose(1, 2), z1).flatten(1)]
        da1 = torch.bmm(delta, w2).mul_(a1 > 0)
        grads += [da1.sum(dim=1), torch.bmm(da1.transpose(1, 2), flat).flatten(1)]
        g = torch.bmm(da1, w1).view(n, batch, *h.shape[1:2], *h.shape[3:])
        g = g.permute(0, 1, 3, 4, 2)                              # channels-last
        for i in reversed(range(convs)):
            cin, cout = self.channels[i], self.channels[i + 1]
            hp, patches_t, wm, out, conv, pooled, index = saved[i]
            hit = self._buffer(f"hit{i}", pooled.shape, x, torch.bool)
            gp = self._buffer(f"gpool{i}", pooled.shape, x)
            torch.where(torch.gt(pooled, 0.0, out=hit), g, g.new_zeros(()), out=gp)  # ReLU
            grads.append(gp.view(n, -1, cout).sum(dim=1))
            # the conv output is no longer needed: its memory takes its gradient
            hq, wq = pooled.shape[2], pooled.shape[3]
            torch.ops.aten.max_pool2d_with_indices_backward.grad_input(
                gp.view(n * batch, hq, wq, cout).permute(0, 3, 1, 2), conv, [2, 2], [2, 2],
                [0, 0], [1, 1], False, index.view(n * batch, hq, wq, cout).permute(0, 3, 1, 2),
                grad_input=conv)
            gw = torch.bmm(patches_t, out)                            # [n, 9·cin, cout]
            grads.append(gw.view(n, 3, 3, cin, cout).permute(0, 4, 3, 1, 2).flatten(1))
            if i == 0:
                break
            # input gradient: the patches' gradient wm · outᵀ [n, (kh, kw, cin), rows] (the
            # faster orientation of this product), each tap's block added, shifted, into a
            # channel-major map [n, cin, B, H, W]
            dcol = torch.bmm(wm, out.transpose(1, 2), out=patches_t)
            dcol = dcol.view(n, 9, cin, batch, 2 * hq, 2 * wq)
            H, Wd = hp.shape[3], hp.shape[4]
            dh = self._buffer(f"dpad{i}", (n, cin, batch, H, Wd), x)
            dh.zero_()
            for t in range(9):
                kh, kw = divmod(t, 3)
                dh[..., kh:kh + 2 * hq, kw:kw + 2 * wq].add_(dcol[:, t])
            g = dh[..., pad:H - pad, pad:Wd - pad].permute(0, 2, 3, 4, 1)
        return torch.cat(grads[::-1], dim=1)

    def _module(self) -> nn.Module:
        layers: list[nn.Module] = []
        for cin, cout in zip(self.channels[:-1], self.channels[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=self.padding), nn.ReLU(), nn.MaxPool2d(2)]
        layers += [nn.Flatten(), nn.Linear(self.flat, self.hidden), nn.ReLU(),
                   nn.Linear(self.hidden, self.num_classes)]
        return nn.Sequential(*layers)


class ModelSpec(Component):
    """A registered model family: :meth:`build` makes the batched model for a dataset."""

    paper: ClassVar[str] = ""

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> BatchedModel:
        raise NotImplementedError


@MODELS.register("logreg")
class LogReg(ModelSpec):
    """Multinomial logistic regression on the flattened input."""

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> BatchedModel:
        return BatchedMLP(math.prod(input_shape), [], num_classes)


class MLPParams(Params):
    hidden: list[int] = Field([64], min_length=1, description="hidden layer widths")


@MODELS.register("mlp")
class MLP(ModelSpec):
    """Fully connected network with ReLU hidden layers of the given widths."""

    Params: ClassVar[type[MLPParams]] = MLPParams

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> BatchedModel:
        if any(h < 1 for h in self.params.hidden):
            raise ValueError("mlp hidden widths must be ≥ 1")
        return BatchedMLP(math.prod(input_shape), self.params.hidden, num_classes)


class CNNParams(Params):
    channels: list[int] = Field([16, 32], min_length=1, max_length=4,
                                description="output channels of each conv block")
    hidden: int = Field(64, ge=1, description="width of the dense hidden layer")
    padding: int = Field(1, ge=0, le=1, description="zero padding of each 3×3 convolution: 1 keeps "
                         "the size before pooling; 0 ('valid', as the CNN of Fang et al. and "
                         "FLTrust: 28→26→13→11→5)")


@MODELS.register("cnn")
class CNN(ModelSpec):
    """Small CNN for image data (e.g. 1×28×28 MNIST, 3×32×32 CIFAR-10): conv blocks of
    3×3 convolution, ReLU and 2×2 max-pooling, then one dense hidden layer. No BatchNorm."""

    Params: ClassVar[type[CNNParams]] = CNNParams

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> BatchedModel:
        return BatchedCNN(input_shape, self.params.channels, self.params.hidden, num_classes,
                          self.params.padding)
