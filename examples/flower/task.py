"""The model, the data and local training of the example: the bundled digits (byzbench's
loader and IID partition), a small torch MLP, plain SGD."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from byzbench.config import ComponentSpec
from byzbench.engine.simulation import build
from byzbench.registry import DATASETS, PARTITIONS
from byzbench.seeding import numpy_rng

_CACHE: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def load_partition(partition_id: int, num_partitions: int, seed: int = 0
                   ) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test) of one client: its IID share of the train split,
    the whole test split."""
    key = (partition_id, num_partitions)
    if key not in _CACHE:
        data = build(DATASETS, ComponentSpec(name="digits")).load()
        parts = build(PARTITIONS, ComponentSpec(name="iid")).split(
            data.y_train.numpy(), num_partitions, numpy_rng(seed, "partition"))
        rows = torch.from_numpy(np.asarray(parts[partition_id]))
        _CACHE[key] = (data.x_train[rows], data.y_train[rows], data.x_test, data.y_test)
    return _CACHE[key]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 5,
          batch_size: int = 32, lr: float = 0.1, seed: int = 0) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    loss = torch.zeros(())
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (min(batch_size, len(y)),), generator=g)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
    return float(loss)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    out = model(x)
    return (float(nn.functional.cross_entropy(out, y)),
            float((out.argmax(1) == y).float().mean()))
