"""Pre-aggregation layers (nnm, bucketing, arc) and the robust learning rate (rlr): by hand,
against the papers' / public implementations' definitions, and as pipeline layers."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_BASE

from byzbench.config import grid_from_dict
from byzbench.defenses.base import DefenseSetup, RoundContext
from byzbench.defenses.preagg import (
    AdaptiveRobustClipping,
    Bucketing,
    NearestNeighborMixing,
    arc_clipped_count,
)
from byzbench.defenses.rlr import RobustLearningRate
from byzbench.engine.simulation import run_cell
from byzbench.registry import DEFENSES
from byzbench.testing import check_defense


def ctx(n: int, f: int, seed: int = 0, samples: torch.Tensor | None = None) -> RoundContext:
    return RoundContext(round=0, client_ids=torch.arange(n),
                        num_samples=torch.ones(n) if samples is None else samples, f=f,
                        generator=torch.Generator().manual_seed(seed),
                        global_params=torch.zeros(1))


def pipeline(*layers, n: int, f: int):
    cls = DEFENSES.get("pipeline")
    pipe = cls(cls.Params(layers=list(layers)))
    pipe.setup(DefenseSetup(num_clients=n, clients_per_round=n, f=f, dim=1, seed=0,
                            device=torch.device("cpu")))
    return pipe


BYZFL_X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])


# ------------------------------------------------------------------------------------ nnm

def test_nnm_by_hand():
    # ByzFL's documented example (f = 1: each row → mean of its 2 nearest, itself included)
    v = NearestNeighborMixing()(BYZFL_X, ctx(3, 1))
    assert torch.allclose(v.passed, torch.tensor([[2.5, 3.5, 4.5], [2.5, 3.5, 4.5],
                                                  [5.5, 6.5, 7.5]]))
    assert v.flagged is None and v.mixing.shape == (3, 3)
    assert torch.allclose(v.aggregate, torch.tensor([3.5, 4.5, 5.5]))  # mean of mixed rows
    # 1-D: 0, 1, 3, 10 with f = 1 → the 3 nearest: {0,1,3}×3 → 4/3, and {1,3,10} → 14/3
    x = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    v = NearestNeighborMixing()(x, ctx(4, 1))
    assert v.passed.squeeze(1).tolist() == pytest.approx([4 / 3, 4 / 3, 4 / 3, 14 / 3])
    assert float(v.aggregate) == pytest.approx(13 / 6)
    expected = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 1, 1, 1]]) / 3
    assert torch.allclose(v.mixing, expected.double())
    assert v.weights.tolist() == pytest.approx([0.25] * 4)          # carried into groups
    assert v.diagnostics["share"].tolist() == pytest.approx([0.25, 1 / 3, 1 / 3, 1 / 12])
    # f = 0: every row becomes the plain mean
    assert torch.allclose(NearestNeighborMixing()(x, ctx(4, 0)).passed,
                          x.mean(dim=0).expand(4, 1))


@pytest.mark.parametrize(("n", "f", "d"), [(7, 2, 5), (10, 3, 40), (5, 0, 3)])
def test_nnm_matches_its_definition(n, f, d):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n + d), dtype=torch.float64)
    got = NearestNeighborMixing()(x, ctx(n, f)).passed
    # ByzFL: cdist, the n − f smallest per row (argpartition), mean of those rows
    dist = torch.cdist(x, x)
    nearest = dist.argsort(dim=1)[:, :n - f]
    assert torch.allclose(got, x[nearest].mean(dim=1))


def test_nnm_keeps_a_row_in_its_own_neighbourhood_among_duplicates():
    x = torch.tensor([[1.0], [1.0], [1.0], [5.0]])
    v = NearestNeighborMixing()(x, ctx(4, 3))      # k = 1: each row alone
    assert torch.equal(v.mixing, torch.eye(4, dtype=torch.float64))


# ------------------------------------------------------------------------------ bucketing

def test_bucketing_by_hand():
    # the round's generator draws the permutation; buckets are consecutive slices of it,
    # the last one smaller (5 rows, s = 2: sizes 2, 2, 1, as in the authors' code)
    x = torch.tensor([[1.0], [2.0], [4.0], [8.0], [16.0]])
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(3)).tolist()
    v = Bucketing()(x, ctx(5, 1, seed=3))
    buckets = [perm[0:2], perm[2:4], perm[4:5]]
    means = [sum(float(x[i]) for i in b) / len(b) for b in buckets]
    assert perm == [1, 0, 3, 4, 2]         # torch's seeded randperm: buckets {1,0} {3,4} {2}
    assert means == [1.5, 12.0, 4.0]
    assert v.passed.squeeze(1).tolist() == pytest.approx(means)
    assert float(v.aggregate) == pytest.approx(35 / 6)    # mean of bucket means (mean: 6.2)
    for row, members in enumerate(buckets):
        expected = torch.zeros(5, dtype=torch.float64)
        expected[members] = 1.0 / len(members)
        assert torch.equal(v.mixing[row], expected)
    assert v.diagnostics["bucket"].tolist() == [next(b for b, m in enumerate(buckets)
                                                     if i in m) for i in range(5)]
    assert v.flagged is None and v.weights.tolist() == pytest.approx([0.2] * 5)
    # s = 1: every row its own bucket (the plain mean); s ≥ n: one bucket
    one = Bucketing(Bucketing.Params(bucket_size=1))(x, ctx(5, 1))
    assert one.passed.shape == (5, 1) and float(one.aggregate) == pytest.approx(6.2)
    whole = Bucketing(Bucketing.Params(bucket_size=8))(x, ctx(5, 1))
    assert whole.passed.shape == (1, 1) and float(whole.passed) == pytest.approx(6.2)


def test_bucketing_is_deterministic_for_a_seed():
    x = torch.randn(11, 4, generator=torch.Generator().manual_seed(0))
    a, b = (Bucketing()(x, ctx(11, 2, seed=7)) for _ in range(2))
    assert torch.equal(a.mixing, b.mixing) and torch.equal(a.aggregate, b.aggregate)
    others = [Bucketing()(x, ctx(11, 2, seed=s)).mixing for s in range(8, 12)]
    assert any(not torch.equal(a.mixing, m) for m in others)
    # the preview draws the same buckets and leaves the caller's generator where it was
    c = ctx(11, 2, seed=7)
    state = c.generator.get_state()
    assert torch.equal(Bucketing().preview(x, c).mixing, a.mixing)
    assert torch.equal(c.generator.get_state(), state)


def test_bucket_flags_and_weights_map_back_to_clients():
    # 8 clients, one far outlier; bucketing (s = 2) → 4 buckets; multikrum keeps 2 of them
    x = torch.tensor([[0.0], [0.1], [0.2], [0.3], [0.4], [0.5], [0.6], [50.0]])
    layer = Bucketing()(x, ctx(8, 1, seed=5))
    mk = DEFENSES.get("multikrum")
    groups = mk(mk.Params(m=2))(layer.passed, ctx(4, 1))
    v = pipeline("bucketing", {"name": "multikrum", "m": 2}, n=8, f=1)(x, ctx(8, 1, seed=5))
    member = layer.mixing
    # a flagged bucket flags its clients; weights = memberᵀ w, summing to 1
    flagged = member[groups.flagged].sum(dim=0) > 0
    assert v.flagged.tolist() == flagged.tolist() and int(v.flagged.sum()) == 4
    assert torch.allclose(v.weights.double(), member.T @ groups.weights.double())
    assert float(v.weights.sum()) == pytest.approx(1.0)
    assert v.weights[v.flagged].abs().sum() == 0 and bool(v.flagged[7])   # the outlier
    assert torch.allclose(v.aggregate, groups.aggregate)
    assert v.diagnostics["0.bucketing.bucket"].tolist() == layer.diagnostics["bucket"].tolist()


def test_nnm_then_krum_flags_only_the_outlier():
    # NNM (f = 1): the outlier's group holds it and 4 honest rows; every honest row's group
    # is the 5 honest rows; Krum picks an honest group: only the outlier is left out
    x = torch.tensor([[0.0], [0.1], [0.2], [0.3], [0.4], [40.0]])
    v = pipeline("nnm", "krum", n=6, f=1)(x, ctx(6, 1))
    assert v.flagged.tolist() == [False] * 5 + [True]
    assert v.weights.tolist() == pytest.approx([0.2] * 5 + [0.0])
    assert float(v.aggregate) == pytest.approx(0.2)


# ------------------------------------------------------------------------------------ arc

@pytest.mark.parametrize(("n", "f", "k"), [(10, 1, 1), (10, 2, 3), (10, 3, 4), (7, 2, 2),
                                           (4, 2, 2), (5, 0, 0), (20, 4, 6), (3, 1, 1)])
def test_arc_clips_floor_2f_over_n_times_n_minus_f(n, f, k):
    assert arc_clipped_count(n, f) == k == int((2 * f / n) * (n - f))   # ByzFL's formula


def test_arc_by_hand():
    # ByzFL's documented example (f = 1, n = 3: k = 1, the largest clipped to ‖x_2‖)
    v = AdaptiveRobustClipping()(BYZFL_X.clone(), ctx(3, 1))
    bound = float(BYZFL_X[1].norm())
    assert torch.allclose(v.passed[:2], BYZFL_X[:2])
    assert torch.allclose(v.passed[2], BYZFL_X[2] * bound / BYZFL_X[2].norm())
    assert torch.allclose(v.passed[2], torch.tensor([4.41004009, 5.04004582, 5.67005155]))
    x = torch.tensor([[1.0], [-2.0], [3.0], [-4.0], [10.0]])
    # f = 1: k = ⌊2·1·4/5⌋ = 1 → 10 clipped to 4
    v = AdaptiveRobustClipping()(x, ctx(5, 1))
    assert v.passed.squeeze(1).tolist() == pytest.approx([1, -2, 3, -4, 4])
    assert float(v.aggregate) == pytest.approx(0.4) and v.flagged is None
    assert v.diagnostics == {"bound": 4.0, "clipped": 1}
    # f = 2: k = ⌊2·2·3/5⌋ = 2 → −4 and 10 clipped to the third largest norm, 3
    v = AdaptiveRobustClipping()(x, ctx(5, 2))
    assert v.passed.squeeze(1).tolist() == pytest.approx([1, -2, 3, -3, 3])
    # f = 0: nothing clipped
    assert torch.equal(AdaptiveRobustClipping()(x, ctx(5, 0)).passed, x)


@pytest.mark.parametrize(("n", "f"), [(10, 3), (9, 2), (6, 1)])
def test_arc_matches_byzfl(n, f):
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    x = x * torch.arange(1, n + 1, dtype=torch.float64)[:, None]
    expected = x.clone()
    order = sorted(range(n), key=lambda i: float(x[i].norm()))
    k = int((2 * f / n) * (n - f))
    bound = float(x[order[n - k - 1]].norm())
    for i in order[n - k:]:
        expected[i] = x[i] * bound / x[i].norm()
    assert torch.allclose(AdaptiveRobustClipping()(x, ctx(n, f)).passed, expected)


# ------------------------------------------------------------------------------------ rlr

def test_rlr_by_hand():
    x = torch.tensor([[1.0, 1.0, -1.0, 0.0],
                      [1.0, -1.0, -1.0, 0.0],
                      [1.0, 1.0, 1.0, 2.0],
                      [-1.0, 1.0, -1.0, 0.0]])
    # |Σ sign| per coordinate: 2, 2, 2, 1; mean: 0.5, 0.5, −0.5, 0.5
    rlr = RobustLearningRate(RobustLearningRate.Params(threshold=2))
    v = rlr(x, ctx(4, 1))
    assert v.aggregate.tolist() == pytest.approx([0.5, 0.5, -0.5, -0.5])
    assert v.flagged is None and v.diagnostics["flipped"] == pytest.approx(0.25)
    assert torch.equal(v.passed[:, 3], -x[:, 3]) and torch.equal(v.passed[:, :3], x[:, :3])
    v = RobustLearningRate(RobustLearningRate.Params(threshold=3))(x, ctx(4, 1))
    assert v.aggregate.tolist() == pytest.approx([-0.5, -0.5, 0.5, -0.5])
    # default θ = 0.4·n = 1.6: only the last coordinate (agreement 1) is flipped
    v = RobustLearningRate()(x, ctx(4, 1))
    assert v.diagnostics["threshold"] == pytest.approx(1.6)
    assert v.aggregate.tolist() == pytest.approx([0.5, 0.5, -0.5, -0.5])
    # sample weighting (the authors' FedAvg): samples 1, 1, 2, 0 → weights 1/4, 1/4, 1/2, 0
    v = RobustLearningRate()(x, ctx(4, 1, samples=torch.tensor([1.0, 1.0, 2.0, 0.0])))
    assert v.weights.tolist() == pytest.approx([0.25, 0.25, 0.5, 0.0])
    assert v.aggregate.tolist() == pytest.approx([1.0, 0.5, 0.0, -1.0])


@pytest.mark.parametrize("threshold", [1, 3, 5])
def test_rlr_matches_the_authors_code(threshold):
    g = torch.Generator().manual_seed(threshold)
    x = torch.randn(7, 50, generator=g)
    x[:, :5] = 0.0
    samples = torch.randint(1, 9, (7,), generator=g).float()
    # compute_robustLR and agg_avg of Ozdayi et al.'s aggregation.py
    sm = torch.abs(sum(torch.sign(row) for row in x))
    lr = sm.clone()
    lr[sm < threshold] = -1.0
    lr[sm >= threshold] = 1.0
    mean = (samples[:, None] * x).sum(dim=0) / samples.sum()
    v = RobustLearningRate(RobustLearningRate.Params(threshold=threshold))(
        x, ctx(7, 1, samples=samples))
    assert torch.allclose(v.aggregate, lr * mean, atol=1e-6)


# ------------------------------------------------------------------- every layer, together

@pytest.mark.parametrize("name", ["nnm", "bucketing", "arc", "rlr"])
def test_a_nan_row_is_flagged_and_left_out(name):
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(1))
    x[2, 1] = float("nan")
    v = DEFENSES.get(name)()(x, ctx(7, 2))
    assert v.flagged.tolist() == [i == 2 for i in range(7)]
    assert float(v.weights[2]) == 0.0 and bool(torch.isfinite(v.aggregate).all())
    if v.mixing is not None:
        assert not v.mixing[:, 2].any()
    clean = torch.cat([x[:2], x[3:]])
    # the rule saw the finite rows only, with f reduced by one (bucketing: the same seeded
    # permutation of the same 6 rows)
    assert torch.allclose(v.aggregate, DEFENSES.get(name)()(clean, ctx(6, 1)).aggregate)


@pytest.mark.parametrize("layers", [["nnm", "krum"], ["bucketing", "centered_clipping"],
                                    ["arc", "trimmed_mean"], ["nnm", "median"]])
def test_the_grid_pipelines_conform(layers):
    # bucketing forms buckets by position: permuting the rows changes them by design
    check_defense(DEFENSES.get("pipeline"), {"layers": layers},
                  permutation="bucketing" not in layers)


def test_grouping_layers_come_after_per_client_layers():
    params = DEFENSES.get("pipeline").Params
    for mixer in ("nnm", "bucketing"):
        with pytest.raises(ValueError, match="verifies signatures"):
            params(layers=[mixer, "ecdsa", "krum"])
        with pytest.raises(ValueError, match="keeps state per client id"):
            params(layers=[mixer, "foolsgold"])
        params(layers=["ecdsa", "reputation", mixer, "krum"])
    params(layers=["arc", "reputation"])  # arc and rlr pass one row per client
    params(layers=["rlr", "ecdsa", "fedavg"])


def test_the_pipelines_run_in_a_tiny_cell():
    cells = grid_from_dict({
        "name": "preagg", "base": {**TINY_BASE, "malicious_fraction": 0.2},
        "grid": {"attack": ["sign_flip"],
                 "defense": ["nnm+krum", "bucketing+centered_clipping", "arc+trimmed_mean",
                             "rlr", "nnm", "bucketing", "arc"]}}).cells
    results = {cell.axes["defense"]: run_cell(cell.config) for cell in cells}
    for label, result in results.items():
        assert result.status == "done", (label, result.error)
        assert len(result.rounds) == TINY_BASE["rounds"], label
        assert all(r["accuracy"] == r["accuracy"] for r in result.rounds), label
    # Krum after NNM decides per client: detection is counted, not n/a
    assert all(r["tp"] is not None for r in results["nnm+krum"].rounds)
