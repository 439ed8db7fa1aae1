"""Registered partitions of the training set among clients: iid, dirichlet, shards, bias.

Every partition returns one sorted int64 index array per client; each training sample goes
to exactly one client and every client gets at least one sample. Asking for more clients
than samples is a :class:`ValueError`. All randomness comes from the ``rng`` argument, so
a fixed generator gives a fixed partition. Nothing loops over samples in Python.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from byzbench.data.base import Partition
from byzbench.registry import PARTITIONS, Params

__all__ = ["Bias", "BiasParams", "Dirichlet", "DirichletParams", "IID", "Shards", "ShardsParams",
           "fill_empty_clients"]


def _check(labels: np.ndarray, num_clients: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) \
            or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    if num_clients > labels.shape[0]:
        raise ValueError(f"cannot split {labels.shape[0]} training samples among {num_clients} "
                         f"clients: every client needs at least one sample (use at most "
                         f"{labels.shape[0]} clients, or more data)")
    return labels


def _groups(owner: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Sample indices per client, each sorted, from ``owner[i]`` = client of sample i."""
    order = np.argsort(owner, kind="stable").astype(np.int64)
    counts = np.bincount(owner, minlength=num_clients)
    return np.split(order, np.cumsum(counts)[:-1])


def fill_empty_clients(owner: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Give every empty client one sample from the others' surplus.

    Each client left empty receives one sample drawn uniformly without replacement from the
    samples of the other clients, never a client's last one (each keeps a random "anchor"
    sample), so donors are chosen in proportion to their size. The total count is
    unchanged; ``owner.size >= k`` guarantees enough donors. Draws nothing when no client
    is empty.
    """
    empty = np.flatnonzero(np.bincount(owner, minlength=k) == 0)
    if empty.size == 0:
        return owner
    perm = rng.permutation(owner.shape[0])
    _, anchor_pos = np.unique(owner[perm], return_index=True)  # one kept sample each
    surplus = np.ones(perm.shape[0], dtype=bool)
    surplus[anchor_pos] = False
    donated = rng.choice(perm[surplus], size=empty.size, replace=False)
    owner = owner.copy()
    owner[donated] = rng.permutation(empty)
    return owner


@PARTITIONS.register("iid")
class IID(Partition):
    """IID split (the baseline setting of McMahan et al. 2017): shuffle, then cut into
    num_clients parts whose sizes differ by at most one."""

    paper: ClassVar[str] = ("McMahan et al., Communication-Efficient Learning of Deep Networks "
                            "from Decentralized Data, AISTATS 2017")

    def split(self, labels: np.ndarray, num_clients: int, rng: np.random.Generator
              ) -> list[np.ndarray]:
        n = _check(labels, num_clients).shape[0]
        owner = np.empty(n, dtype=np.int64)
        owner[rng.permutation(n)] = np.arange(n, dtype=np.int64) * num_clients // n
        return _groups(owner, num_clients)


class DirichletParams(Params):
    alpha: float = Field(0.5, gt=0.0, description="Dirichlet concentration: small → each class "
                                                  "on few clients (label skew), large → iid")


@PARTITIONS.register("dirichlet")
class Dirichlet(Partition):
    """Label-skewed split (Hsu, Qi & Brown 2019): for each class, proportions p ~ Dir(α·1)
    over clients; the class's shuffled samples are cut at round(cumsum(p)·n_c).

    Repair, so every client has a sample: each client left empty receives one sample drawn
    uniformly without replacement from the samples of the other clients, never a client's
    last one (each keeps a random "anchor" sample). Donors are thus chosen in proportion to
    their size, the largest giving most; the total count is unchanged, and n ≥ num_clients
    guarantees enough donors.
    """

    Params: ClassVar[type[DirichletParams]] = DirichletParams
    paper: ClassVar[str] = ("Hsu, Qi & Brown, Measuring the Effects of Non-Identical Data "
                            "Distribution for Federated Visual Classification, "
                            "arXiv:1909.06335, 2019")

    def split(self, labels: np.ndarray, num_clients: int, rng: np.random.Generator
              ) -> list[np.ndarray]:
        labels = _check(labels, num_clients)
        n, k = labels.shape[0], num_clients
        _, inverse, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
        by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(class_counts)[:-1])
        owner = np.empty(n, dtype=np.int64)
        clients = np.arange(k, dtype=np.int64)
        for members in by_class:  # a loop over classes, not samples
            members = rng.permutation(members)
            p = rng.dirichlet(np.full(k, self.params.alpha))
            if not np.all(np.isfinite(p)) or p.sum() <= 0:  # underflow at tiny alpha
                p = np.zeros(k)
                p[rng.integers(k)] = 1.0
            bounds = np.round(np.cumsum(p) * members.shape[0]).astype(np.int64)
            bounds[-1] = members.shape[0]
            owner[members] = np.repeat(clients, np.diff(bounds, prepend=0))
        return _groups(fill_empty_clients(owner, k, rng), k)

class ShardsParams(Params):
    shards_per_client: int = Field(2, ge=1, le=10_000,
                                   description="label-sorted shards each client receives")


@PARTITIONS.register("shards")
class Shards(Partition):
    """Pathological non-IID split (McMahan et al. 2017): sort samples by label (random order
    within a label), cut into num_clients·shards_per_client near-equal contiguous shards,
    give each client shards_per_client random shards.

    A shard is label-pure when class sizes are multiples of the shard size; otherwise a
    shard may straddle a class boundary, as in the original. With fewer than
    num_clients·shards_per_client samples, each client gets ⌊n/num_clients⌋ shards instead.
    """

    Params: ClassVar[type[ShardsParams]] = ShardsParams
    paper: ClassVar[str] = ("McMahan et al., Communication-Efficient Learning of Deep Networks "
                            "from Decentralized Data, AISTATS 2017")

    def split(self, labels: np.ndarray, num_clients: int, rng: np.random.Generator
              ) -> list[np.ndarray]:
        labels = _check(labels, num_clients)
        n = labels.shape[0]
        per_client = min(self.params.shards_per_client, n // num_clients)
        num_shards = num_clients * per_client
        order = np.lexsort((rng.random(n), labels))          # by label, random within
        shard_of_rank = np.arange(n, dtype=np.int64) * num_shards // n
        shard_owner = np.empty(num_shards, dtype=np.int64)
        shard_owner[rng.permutation(num_shards)] = np.arange(num_shards) // per_client
        owner = np.empty(n, dtype=np.int64)
        owner[order] = shard_owner[shard_of_rank]
        return _groups(owner, num_clients)


class BiasParams(Params):
    bias: float = Field(0.5, ge=0.0, le=1.0,
                        description="h: probability that a sample of label l goes to group l "
                                    "(any other group: (1-h)/(C-1) each); 1/C is iid, 1 gives "
                                    "every client a single label")


@PARTITIONS.register("bias")
class Bias(Partition):
    """Fang et al.'s non-IID split (USENIX Security 2020; also FLTrust, NDSS 2021): the
    clients form C groups, C the number of distinct labels; a sample of label l goes to
    group l with probability h (`bias`) and to each other group with probability
    (1−h)/(C−1), then to a client of its group drawn uniformly.

    Groups are contiguous blocks of near-equal size: client j is in group ⌊j·C/k⌋ of k
    clients (sizes ⌊k/C⌋ or ⌈k/C⌉, Fang's layout when C divides k). With fewer clients than
    labels, group g is the single client ⌊g·k/C⌋, which then serves several groups. A
    client left empty by the draw (few samples) gets one sample as in `dirichlet`'s
    repair; with C = 1 the split is uniform at random.
    """

    Params: ClassVar[type[BiasParams]] = BiasParams
    paper: ClassVar[str] = ("Fang, Cao, Jia & Gong, Local Model Poisoning Attacks to "
                            "Byzantine-Robust Federated Learning, USENIX Security 2020")

    def split(self, labels: np.ndarray, num_clients: int, rng: np.random.Generator
              ) -> list[np.ndarray]:
        labels = _check(labels, num_clients)
        n, k, h = labels.shape[0], num_clients, self.params.bias
        _, label = np.unique(labels, return_inverse=True)  # labels as 0..C-1
        label = label.reshape(-1).astype(np.int64)
        c = int(label.max(initial=0)) + 1
        if c > 1:
            other = rng.integers(0, c - 1, size=n)          # uniform over the C-1 others
            other += other >= label
            group = np.where(rng.random(n) < h, label, other)
        else:
            group = np.zeros(n, dtype=np.int64)
        if k >= c:  # group g = clients [first[g], first[g] + size[g])
            size = np.bincount(np.arange(k) * c // k, minlength=c)
            first = np.cumsum(size) - size
            owner = first[group] + rng.integers(0, size[group])
        else:
            owner = np.arange(c, dtype=np.int64) * k // c
            owner = owner[group]
        return _groups(fill_empty_clients(owner.astype(np.int64), k, rng), k)
