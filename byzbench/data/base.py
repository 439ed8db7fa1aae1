"""Dataset and partition interfaces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from byzbench.registry import Component, Params


@dataclass(frozen=True)
class Dataset:
    """A loaded, split and normalised dataset, on the CPU.

    ``x_*`` are float32 ``[N, *input_shape]`` (images as ``[C, H, W]``), ``y_*`` int64 ``[N]``.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


class DatasetParams(Params):
    """Parameters every dataset accepts."""

    normalize: bool = Field(True, description="standardise features with train-set statistics")


class DatasetSource(Component):
    """A registered dataset: :meth:`load` reads, splits and normalises it."""

    Params: ClassVar[type[DatasetParams]] = DatasetParams
    paper: ClassVar[str] = ""

    def load(self) -> Dataset:
        raise NotImplementedError

    def check(self) -> None:
        """Raise if the data cannot be had (missing files), without loading it all."""

    def train_size_bound(self) -> int | None:
        """An upper bound on the training samples, known without reading the data (the grid
        check rejects more clients than that before anything runs); None when unknown."""
        return None


class Partition(Component):
    """Splits training sample indices among clients.

    Guarantees: every client gets at least one sample; every training sample goes to
    exactly one client.
    """

    paper: ClassVar[str] = ""

    def split(self, labels: np.ndarray, num_clients: int, rng: np.random.Generator
              ) -> list[np.ndarray]:
        raise NotImplementedError
