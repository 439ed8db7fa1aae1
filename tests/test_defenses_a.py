"""Defenses, part A: krum, multikrum, median, trimmed_mean, clustering, reputation, ecdsa,
norm_clip, anomaly_filter, pipeline, signguard and the geometry helpers."""

from __future__ import annotations

import copy
import math
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from byzbench.crypto import AttackerKey, ClientKeyring, Rejection, update_digests
from byzbench.defenses import geometry as C
from byzbench.defenses.base import DefenseSetup, RoundContext
from byzbench.defenses.distance import krum_scores
from byzbench.registry import DEFENSES

MINE = ["krum", "multikrum", "median", "trimmed_mean", "clustering", "reputation", "ecdsa",
        "norm_clip", "anomaly_filter", "pipeline", "signguard"]
ROBUST = ["krum", "multikrum", "median", "trimmed_mean", "clustering", "anomaly_filter"]


# ---------------------------------------------------------------- helpers

def make(name: str, **params):
    cls = DEFENSES.get(name)
    return cls(cls.Params(**params))


def ctx_for(updates: torch.Tensor, f: int = 0, ids=None, round_: int = 0, messages=None,
            nonce=None, samples=None, seed: int = 0) -> RoundContext:
    n, d = updates.shape
    return RoundContext(
        round=round_,
        client_ids=torch.arange(n) if ids is None else torch.as_tensor(ids, dtype=torch.long),
        num_samples=torch.ones(n) if samples is None else torch.as_tensor(samples,
                                                                          dtype=torch.float32),
        f=f, generator=torch.Generator().manual_seed(seed), global_params=torch.zeros(d),
        messages=messages, nonce=nonce)


def setup(defense, n: int, d: int, f: int = 0, keys=None, num_clients: int | None = None):
    defense.setup(DefenseSetup(num_clients=num_clients or n, clients_per_round=n, f=f, dim=d,
                               seed=0, device=torch.device("cpu"), public_keys=keys))
    return defense


def honest_plus(n_honest: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 1.0 + 0.1 * torch.randn(n_honest, d, generator=g)


def flags(v) -> list[int]:
    return [] if v.flagged is None else torch.nonzero(v.flagged).squeeze(1).tolist()


# ---------------------------------------------------------------- registry metadata

@pytest.mark.parametrize("name", MINE)
def test_metadata(name):
    cls = DEFENSES.get(name)
    assert cls.__doc__ and len(cls.__doc__.strip()) > 40
    assert cls.paper
    assert cls.privacy.note
    for field_name, field in cls.Params.model_fields.items():
        assert field.description, f"{name}.{field_name} has no description"
    with pytest.raises(ValidationError):
        cls.Params(no_such_param=1)


# ---------------------------------------------------------------- krum / multikrum by hand

# a=(0,0) b=(2,0) c=(0,1) d=(1,2) e=(10,10); squared distances:
#   ab 4  ac 1  ad 5  ae 200 | bc 5  bd 5  be 164 | cd 2  ce 181 | de 145
# f = 1, n = 5 → n − f − 2 = 2 nearest neighbours:
#   a: 1+4=5   b: 4+5=9   c: 1+2=3   d: 2+5=7   e: 145+164=309
KRUM_X = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 2.0], [10.0, 10.0]])


def test_krum_scores_by_hand():
    dist = C.pairwise_sq_distances(KRUM_X)
    expected = torch.tensor([[0, 4, 1, 5, 200], [4, 0, 5, 5, 164], [1, 5, 0, 2, 181],
                             [5, 5, 2, 0, 145], [200, 164, 181, 145, 0]], dtype=torch.float64)
    assert torch.allclose(dist, expected, atol=1e-9)
    assert krum_scores(dist, 1).tolist() == [5.0, 9.0, 3.0, 7.0, 309.0]
    # f = 0 → 3 neighbours: a 1+4+5, b 4+5+5, c 1+2+5, d 2+5+5, e 145+164+181
    assert krum_scores(dist, 0).tolist() == [10.0, 14.0, 8.0, 12.0, 490.0]


def test_krum_picks_lowest_score():
    krum = make("krum")
    v = krum(KRUM_X, ctx_for(KRUM_X, f=1))
    assert v.aggregate.tolist() == [0.0, 1.0]
    assert flags(v) == [0, 1, 3, 4]
    assert v.weights.tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert v.diagnostics["scores"].tolist() == [5.0, 9.0, 3.0, 7.0, 309.0]


def test_multikrum_by_hand():
    v = make("multikrum")(KRUM_X, ctx_for(KRUM_X, f=1))  # m = n − f = 4: c, a, d, b
    assert torch.allclose(v.aggregate, torch.tensor([0.75, 0.75]))
    assert flags(v) == [4]
    assert torch.allclose(v.weights, torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0]))
    v = make("multikrum", m=2)(KRUM_X, ctx_for(KRUM_X, f=1))  # c, a
    assert torch.allclose(v.aggregate, torch.tensor([0.0, 0.5]))
    assert flags(v) == [1, 3, 4]


def test_krum_requirement_messages():
    for name in ("krum", "multikrum"):
        d = make(name)
        reason = d.requirement(6, 2)
        assert reason is not None and "n > 2f + 2" in reason and "n=6" in reason
        assert "f=2" in reason and name in reason
        assert d.requirement(7, 2) is None
        assert d.requirement(4, 1) is not None and d.requirement(5, 1) is None
    assert make("multikrum", m=9).requirement(8, 1) is not None


def test_krum_clamps_f_beyond_support():
    x = honest_plus(6, 5)
    for name in ("krum", "multikrum"):
        v = make(name)(x, ctx_for(x, f=10))  # sampling gave more attackers than supported
        assert torch.isfinite(v.aggregate).all() and v.weights.sum() == pytest.approx(1.0)
        for n in (1, 2, 3):
            v = make(name)(x[:n], ctx_for(x[:n], f=3))
            assert torch.isfinite(v.aggregate).all()


# ---------------------------------------------------------------- median / trimmed mean by hand

COORD_X = torch.tensor([[1.0, 10.0, -1.0], [2.0, 20.0, -2.0], [4.0, 30.0, -3.0],
                        [5.0, 40.0, -4.0], [100.0, -100.0, 50.0]])


def test_median_by_hand():
    v = make("median")(COORD_X, ctx_for(COORD_X, f=1))
    assert v.aggregate.tolist() == [4.0, 20.0, -2.0]
    assert v.flagged is None
    # row 2 is the median of coordinate 0, row 1 of 1 and 2 → shares 1/3 and 2/3
    assert torch.allclose(v.weights, torch.tensor([0.0, 2 / 3, 1 / 3, 0.0, 0.0]))
    v = make("median")(COORD_X[:4], ctx_for(COORD_X[:4]))  # even n: mean of the middle two
    assert v.aggregate.tolist() == [3.0, 25.0, -2.5]


def test_trimmed_mean_by_hand():
    # b = 1 per end: col0 (2+4+5)/3, col1 (10+20+30)/3, col2 (−3−2−1)/3
    expected = torch.tensor([11 / 3, 20.0, -2.0])
    for tm, f in ((make("trimmed_mean", beta=0.2), 0), (make("trimmed_mean"), 1)):
        v = tm(COORD_X, ctx_for(COORD_X, f=f))
        assert torch.allclose(v.aggregate, expected)
        assert v.flagged is None
        # kept coordinates per row: 2, 3, 3, 1, 0 of 9
        assert torch.allclose(v.weights, torch.tensor([2, 3, 3, 1, 0]) / 9.0)
    v = make("trimmed_mean", beta=0.0)(COORD_X, ctx_for(COORD_X))
    assert torch.allclose(v.aggregate, COORD_X.mean(0))
    assert make("trimmed_mean", beta=0.4).requirement(5, 0) is None  # b = 2 < 5/2
    assert make("trimmed_mean").requirement(4, 2) is not None
    assert make("trimmed_mean").requirement(5, 2) is None


# ---------------------------------------------------------------- outliers: 1e9, 1e30, NaN, Inf

@pytest.mark.parametrize("bad", [1e9, 1e30, float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum", "multikrum"])
def test_outlier_row_stays_outside(name, bad):
    n, d = 9, 2000
    x = honest_plus(n, d)
    x[4] = bad
    honest = torch.cat([x[:4], x[5:]])
    v = make(name)(x, ctx_for(x, f=1))
    lo, hi = honest.min(0).values, honest.max(0).values
    assert torch.isfinite(v.aggregate).all()
    assert bool(((v.aggregate >= lo - 1e-5) & (v.aggregate <= hi + 1e-5)).all())
    assert float(v.weights[4]) == 0.0
    if not math.isfinite(bad):
        assert v.flagged is not None and bool(v.flagged[4])


@pytest.mark.parametrize("bad", [1e9, 1e30, float("nan")])
@pytest.mark.parametrize("name", MINE)
def test_no_crash_no_nan(name, bad):
    n, d = 10, 3000
    x = honest_plus(n, d, seed=1)
    x[2] = bad
    x[7, 5] = bad  # a single poisoned coordinate too
    keys = ClientKeyring(range(n))
    msgs, _ = keys.sign_round(list(range(n)), 0, b"nonce", x)
    defense = setup(make(name), n, d, f=2, keys=keys.public_registry())
    v = defense(x, ctx_for(x, f=2, messages=msgs, nonce=b"nonce"))
    assert v.aggregate.shape == (d,) and v.weights.shape == (n,)
    assert torch.isfinite(v.weights).all() and (v.weights >= 0).all()
    if name not in ("ecdsa", "reputation", "norm_clip") or math.isnan(bad):
        assert torch.isfinite(v.aggregate).all()
    if name not in ("ecdsa", "reputation", "norm_clip", "clustering") or math.isnan(bad):
        # (k=2 KMeans isolates the all-1e9 row and keeps row 7 with the honest ones;
        # reputation needs rounds; ecdsa/norm_clip do not judge magnitude per coordinate)
        assert float(v.aggregate.abs().max()) < 1e3
    if math.isnan(bad):
        assert v.flagged is not None and bool(v.flagged[2]) and bool(v.flagged[7])
        assert float(v.weights[2]) == 0.0 and float(v.weights[7]) == 0.0


def test_all_rows_nonfinite():
    x = torch.full((5, 4), float("nan"))
    for name in ROBUST + ["reputation", "norm_clip"]:
        v = setup(make(name), 5, 4)(x, ctx_for(x, f=1))
        assert torch.equal(v.aggregate, torch.zeros(4))
        assert v.flagged is not None and bool(v.flagged.all())


# ---------------------------------------------------------------- permutation equivariance

@pytest.mark.parametrize("name", MINE)
def test_permutation_equivariance(name):
    n, d = 12, 40
    g = torch.Generator().manual_seed(3)
    x = 1.0 + 0.2 * torch.randn(n, d, generator=g)
    x[:3] = -3.0 + 0.2 * torch.randn(3, d, generator=g)  # three attackers
    samples = torch.arange(1, n + 1, dtype=torch.float32)
    perm = torch.randperm(n, generator=g)
    keys = ClientKeyring(range(n))
    nonce = b"perm"
    msgs, _ = keys.sign_round(list(range(n)), 5, nonce, x)
    runs = []
    for order in (torch.arange(n), perm):
        defense = setup(make(name), n, d, f=3, keys=keys.public_registry())
        ctx = ctx_for(x[order], f=3, ids=order, round_=5, samples=samples[order],
                      messages=[msgs[i] for i in order.tolist()], nonce=nonce)
        runs.append(defense(x[order], ctx))
    a, b = runs
    assert torch.allclose(a.aggregate, b.aggregate, atol=1e-5)
    assert torch.allclose(a.weights[perm], b.weights, atol=1e-6)
    assert (a.flagged is None) == (b.flagged is None)
    if a.flagged is not None:
        assert torch.equal(a.flagged[perm], b.flagged)


# ---------------------------------------------------------------- clustering

def test_clustering_two_obvious_clusters():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([5.0 + 0.1 * torch.randn(7, 30, generator=g),
                   -5.0 + 0.1 * torch.randn(3, 30, generator=g)])
    perm = torch.randperm(10, generator=g)
    x = x[perm]
    bad = perm >= 7
    for metric in ("euclidean", "cosine"):
        v = make("clustering", metric=metric)(x, ctx_for(x))
        assert torch.equal(v.flagged, bad)
        assert torch.allclose(v.aggregate, x[~bad].mean(0), atol=1e-5)
    # cosine: same directions, very different norms → one cluster by angle, not by size
    y = torch.cat([torch.ones(6, 8) * torch.arange(1, 7)[:, None].float(),
                   -torch.ones(4, 8) * torch.arange(1, 5)[:, None].float()])
    v = make("clustering", metric="cosine")(y, ctx_for(y))
    assert flags(v) == [6, 7, 8, 9]


def test_exact_coordinates_preserve_distances():
    from byzbench.defenses.clustering import exact_coordinates
    x = honest_plus(8, 500)
    x[3] = 1e30
    pts = torch.from_numpy(exact_coordinates(x))
    ref = torch.cdist(x[[0, 1, 2, 4, 5]].double(), x[[0, 1, 2, 4, 5]].double()) ** 2
    got = torch.cdist(pts[[0, 1, 2, 4, 5]], pts[[0, 1, 2, 4, 5]]) ** 2
    assert torch.allclose(got, ref, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- reputation by hand

def test_reputation_by_hand():
    rep = setup(make("reputation", decay=0.5, threshold=0.6), 3, 2, num_clients=6)
    # round 1: median (1, 0); cos 1, 1, −1 → scores 1, 1, 0 → r = 1, 1, 0.5
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    v = rep(x, ctx_for(x, ids=[0, 1, 2]))
    assert flags(v) == [2]
    assert torch.allclose(v.aggregate, torch.tensor([1.0, 0.0]))
    assert torch.allclose(v.weights, torch.tensor([0.5, 0.5, 0.0]))
    # round 2, clients 0, 2, 5 (5 is new, starts at 1): scores 1, 0, 1 → r0 1, r2 0.25, r5 1
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])
    v = rep(x, ctx_for(x, ids=[0, 2, 5]))
    assert flags(v) == [1]
    assert torch.allclose(rep.table.get(torch.tensor([0, 1, 2, 5])),
                          torch.tensor([1.0, 1.0, 0.25, 1.0], dtype=torch.float64))
    # round 3, clients 1, 2: median (0.5, 0.5); cos 1/√2 → score s = (1 + 1/√2)/2
    s = (1 + 1 / math.sqrt(2)) / 2
    r1, r2 = 0.5 * 1.0 + 0.5 * s, 0.5 * 0.25 + 0.5 * s  # 0.9268, 0.5518 < 0.6
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = rep(x, ctx_for(x, ids=[1, 2]))
    assert flags(v) == [1]
    assert torch.allclose(rep.table.get(torch.tensor([1, 2])),
                          torch.tensor([r1, r2], dtype=torch.float64))
    # the same round with threshold 0.5: both kept, aggregate weighted by reputation
    rep2 = setup(make("reputation", decay=0.5, threshold=0.5), 3, 2)
    rep2.table.set(torch.tensor([1, 2]), torch.tensor([1.0, 0.25], dtype=torch.float64))
    v = rep2(x, ctx_for(x, ids=[1, 2]))
    assert flags(v) == []
    assert torch.allclose(v.aggregate, torch.tensor([r1, r2]) / (r1 + r2), atol=1e-6)


def test_reputation_default_decay_and_duplicate_ids():
    rep = setup(make("reputation"), 3, 2)
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # median (1, 0): scores 1, 1, 0.5
    rep(x, ctx_for(x, ids=[7, 7, 9]))  # two rows claim id 7: their mean score counts once
    got = rep.table.get(torch.tensor([7, 9]))
    assert torch.allclose(got, torch.tensor([1.0, 0.95 + 0.05 * 0.5], dtype=torch.float64))


# ---------------------------------------------------------------- signatures (real keys)

@pytest.fixture(params=["ecdsa-p256", "ed25519"])
def signed(request):
    scheme = request.param
    n, d = 6, 50
    keys = ClientKeyring(range(n), scheme)
    x = honest_plus(n, d)
    nonce, round_ = b"\x01" * 16, 4
    msgs, _ = keys.sign_round(list(range(n)), round_, nonce, x)
    ecdsa = setup(make("ecdsa", scheme=scheme), n, d, keys=keys.public_registry())
    return scheme, keys, ecdsa, x, msgs, nonce, round_


def _run(ecdsa, x, msgs, nonce, round_, ids=None):
    return ecdsa(x, ctx_for(x, ids=ids, round_=round_, messages=msgs, nonce=nonce,
                            samples=[1, 2, 3, 4, 5, 6]))


def test_valid_messages_pass(signed):
    _, _, ecdsa, x, msgs, nonce, round_ = signed
    v = _run(ecdsa, x, msgs, nonce, round_)
    assert flags(v) == []
    w = torch.arange(1, 7, dtype=torch.float32) / 21
    assert torch.allclose(v.weights, w) and torch.allclose(v.aggregate, w @ x, atol=1e-6)
    assert v.verify_seconds > 0 and v.diagnostics["rejection"] == [None] * 6


def test_flipped_bit_rejected(signed):
    _, _, ecdsa, x, msgs, nonce, round_ = signed
    y = x.clone()
    y.view(torch.int32)[2, 17] ^= 1  # one bit of one float
    v = _run(ecdsa, y, msgs, nonce, round_)
    assert flags(v) == [2] and v.diagnostics["rejection"][2] == Rejection.BAD_SIGNATURE.value
    assert float(v.weights[2]) == 0.0


def test_replay_rejected(signed):
    _, keys, ecdsa, x, msgs, nonce, round_ = signed
    old_round, _ = keys.sign_round([1], round_ - 1, nonce, x[1:2])
    old_nonce, _ = keys.sign_round([3], round_, b"\x02" * 16, x[3:4])
    replayed = list(msgs)
    replayed[1], replayed[3] = old_round[0], old_nonce[0]
    v = _run(ecdsa, x, replayed, nonce, round_)
    assert flags(v) == [1, 3]
    assert v.diagnostics["rejection"][1] == Rejection.WRONG_ROUND.value
    assert v.diagnostics["rejection"][3] == Rejection.WRONG_NONCE.value


def test_unknown_key_rejected(signed):
    scheme, _, ecdsa, x, msgs, nonce, round_ = signed
    forged = AttackerKey(scheme).forge(99, round_, nonce, update_digests(x[5:6])[0])
    m = list(msgs)
    m[5] = forged
    v = _run(ecdsa, x, m, nonce, round_, ids=[0, 1, 2, 3, 4, 99])
    assert flags(v) == [5] and v.diagnostics["rejection"][5] == Rejection.UNKNOWN_CLIENT.value


def test_wrong_client_id_rejected(signed):
    _, _, ecdsa, x, msgs, nonce, round_ = signed
    m = list(msgs)
    m[1] = replace(msgs[1], client_id=2)  # client 1's message re-labelled as client 2
    v = _run(ecdsa, x, m, nonce, round_, ids=[0, 2, 2, 3, 4, 5])
    assert flags(v) == [1] and v.diagnostics["rejection"][1] == Rejection.BAD_SIGNATURE.value
    # intact message, but the row is attributed to another client
    v = _run(ecdsa, x, msgs, nonce, round_, ids=[0, 1, 2, 3, 5, 5])
    assert flags(v) == [4] and v.diagnostics["rejection"][4] == "id_mismatch"


def test_signed_by_another_key_rejected(signed):
    scheme, _, ecdsa, x, msgs, nonce, round_ = signed
    m = list(msgs)
    m[3] = AttackerKey(scheme).forge(3, round_, nonce, update_digests(x[3:4])[0])
    v = _run(ecdsa, x, m, nonce, round_)
    assert flags(v) == [3] and v.diagnostics["rejection"][3] == Rejection.BAD_SIGNATURE.value


def test_keys_never_leave_memory():
    keys = ClientKeyring(range(3))
    with pytest.raises(TypeError):
        pickle.dumps(keys)
    with pytest.raises(TypeError):
        copy.deepcopy(keys)
    with pytest.raises(TypeError):
        copy.copy(keys)


def test_ecdsa_needs_keys_and_messages():
    x = honest_plus(3, 4)
    ecdsa = make("ecdsa")
    assert ecdsa.needs_signatures and ecdsa.params.scheme == "ecdsa-p256"
    setup(ecdsa, 3, 4)
    with pytest.raises(RuntimeError, match="public keys"):
        ecdsa(x, ctx_for(x))
    keys = ClientKeyring(range(3), "ed25519")
    with pytest.raises(ValueError, match="ed25519"):
        setup(make("ecdsa"), 3, 4, keys=keys.public_registry())


# ---------------------------------------------------------------- pipeline & signguard

def _signed_round(n, d, f=0, seed=0, scheme="ecdsa-p256"):
    x = honest_plus(n, d, seed)
    keys = ClientKeyring(range(n), scheme)
    nonce = b"round-nonce"
    msgs, _ = keys.sign_round(list(range(n)), 1, nonce, x)
    return x, keys, msgs, nonce


def test_pipeline_ecdsa_multikrum():
    n, d = 10, 30
    x, keys, msgs, nonce = _signed_round(n, d)
    y = x.clone()
    y[0] += 1.0        # tampered in transit: signature fails
    y[9] = -20.0       # signs its own poison: authentic, left for multikrum
    pipe = make("pipeline", layers=["ecdsa", {"name": "multikrum"}])
    assert pipe.needs_signatures and pipe.signature_scheme == "ecdsa-p256"
    assert pipe.label == "ecdsa+multikrum"
    setup(pipe, n, d, f=2, keys=keys.public_registry())
    v = pipe(y, ctx_for(y, f=2, round_=1, messages=msgs, nonce=nonce))
    # ecdsa flags 0; multikrum on 9 rows with f = 2 − 1 = 1 → keeps 8, flags 9
    assert flags(v) == [0, 9]
    assert torch.allclose(v.weights, torch.tensor([0.0] + [1 / 8] * 8 + [0.0]))
    assert torch.allclose(v.aggregate, y[1:9].mean(0), atol=1e-6)
    assert v.verify_seconds > 0 and v.diagnostics["0.ecdsa.rejection"][0] == "bad_signature"


def test_pipeline_median_last_reports_earlier_flags_only():
    n, d = 7, 20
    x, keys, msgs, nonce = _signed_round(n, d)
    y = x.clone()
    y[3] *= 2.0
    pipe = setup(make("pipeline", layers=["ecdsa", "median"]), n, d, keys=keys.public_registry())
    v = pipe(y, ctx_for(y, round_=1, messages=msgs, nonce=nonce))
    assert flags(v) == [3]
    keep = [0, 1, 2, 4, 5, 6]
    assert torch.allclose(v.aggregate, C.coordinate_median(y[keep]))
    assert float(v.weights[3]) == 0.0 and v.weights.sum() == pytest.approx(1.0)
    # no layer decides → None
    v = make("pipeline", layers=["norm_clip", "median"])(x, ctx_for(x))
    assert v.flagged is None
    assert not make("pipeline", layers=["norm_clip", "median"]).needs_signatures


def test_pipeline_weights_flow_and_transform():
    # norm clipping passes clipped rows on: clip to 1, then the mean of the clipped rows
    x = torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.0, 2.0]])
    v = make("pipeline", layers=[{"name": "norm_clip", "max_norm": 1.0}, "fedavg"])(
        x, ctx_for(x, samples=[1, 1, 2]))
    clipped = torch.tensor([[0.6, 0.8], [0.6, 0.8], [0.0, 1.0]])
    assert torch.allclose(v.aggregate, (clipped * torch.tensor([[1.0], [1.0], [2.0]])).sum(0) / 4)
    assert torch.allclose(v.weights, torch.tensor([0.25, 0.25, 0.5]))
    # reputation weights flow into multikrum's mean
    pipe = make("pipeline", layers=[{"name": "reputation", "threshold": 0.0}, "multikrum"])
    rep = pipe.layers[0]
    rep.table.set(torch.arange(4), torch.tensor([1.0, 1.0, 1.0, 0.2], dtype=torch.float64))
    y = torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1], [1.0, 0.05]])
    v = pipe(y, ctx_for(y, f=0))  # multikrum keeps all 4
    r = rep.table.get(torch.arange(4)).float()
    assert torch.allclose(v.weights, r / r.sum(), atol=1e-6)
    assert torch.allclose(v.aggregate, (r / r.sum()) @ y, atol=1e-6)


def test_pipeline_spec_errors():
    with pytest.raises(ValidationError, match=r"layer 1: unknown defense 'multikrun'.*"
                                              r"did you mean 'multikrum'"):
        DEFENSES.get("pipeline").Params(layers=["ecdsa", "multikrun"])
    with pytest.raises(ValidationError, match=r"layer 0 \(krum\): invalid parameters"):
        DEFENSES.get("pipeline").Params(layers=[{"name": "krum", "bogus": 1}])
    with pytest.raises(ValueError, match=r"invalid parameters: decay: Input should be less "
                                         r"than 1 \[") as info:
        DEFENSES.get("pipeline").Params(layers=[{"name": "reputation", "decay": 2}])
    assert "validation error for ReputationParams" not in str(info.value)  # not the dump
    with pytest.raises(ValidationError, match="assumed_fraction on the pipeline"):
        DEFENSES.get("pipeline").Params(layers=[{"name": "krum", "assumed_fraction": 0.1}])
    with pytest.raises(ValidationError):
        DEFENSES.get("pipeline").Params(layers=[])
    p = make("pipeline", layers=["ecdsa", {"name": "trimmed_mean", "params": {"beta": 0.1}}],
             label="mine")
    assert p.layers[1].params.beta == 0.1 and p.label == "mine"
    assert make("pipeline", layers=[{"name": "ecdsa", "scheme": "ed25519"}, "krum"]
                ).signature_scheme == "ed25519"
    reason = make("pipeline", layers=["ecdsa", "krum"]).requirement(6, 2)
    assert reason is not None and reason.startswith("layer 1 (krum):")
    nested = make("pipeline", layers=[{"name": "pipeline", "layers": ["ecdsa"]}, "median"])
    assert nested.needs_signatures and nested.signature_scheme == "ecdsa-p256"


def test_signguard_composition():
    n, d = 10, 200
    x, keys, msgs, nonce = _signed_round(n, d, seed=4)
    y = x.clone()
    y[0] += 0.5          # tampered → ecdsa
    y[1] = x[1] * 50.0   # scaled → anomaly filter (and re-signed: it is authentic)
    m = list(msgs)
    m[1] = keys.sign(1, 1, nonce, update_digests(y[1:2])[0])
    sg = make("signguard")
    assert sg.needs_signatures and sg.signature_scheme == "ecdsa-p256" and sg.label == "signguard"
    assert sg.privacy.keeps_client_state
    setup(sg, n, d, f=2, keys=keys.public_registry())
    v = sg(y, ctx_for(y, f=2, round_=1, messages=m, nonce=nonce))
    # ecdsa flags 0, the filter flags 1; f = 2 − 2 = 0 → multikrum keeps the other 8
    assert flags(v) == [0, 1]
    assert float(v.weights[0]) == 0.0 and float(v.weights[1]) == 0.0
    assert v.weights.sum() == pytest.approx(1.0)
    rep = sg.layers[2].table.get(torch.arange(2, 10)).float()
    assert torch.allclose(v.weights[2:], rep / rep.sum(), atol=1e-6)
    assert torch.allclose(v.aggregate, v.weights @ y.nan_to_num(), atol=1e-5)
    assert v.verify_seconds > 0 and v.diagnostics["1.anomaly_filter.z_norm"][1] > 3.0
    assert sg.requirement(6, 2) is not None and sg.requirement(7, 2) is None


def test_signguard_reputation_catches_persistent_sign_flip():
    n, d = 10, 100
    sg = make("signguard", decay=0.5, z_threshold=50.0)  # filter off: reputation must act
    keys = ClientKeyring(range(n))
    setup(sg, n, d, f=2, keys=keys.public_registry())
    for r in range(4):
        x = honest_plus(n, d, seed=r)
        x[9] = -x[9]
        msgs, _ = keys.sign_round(list(range(n)), r, b"n", x)
        v = sg(x, ctx_for(x, f=2, round_=r, messages=msgs, nonce=b"n"))
    assert bool(v.flagged[9])


# ---------------------------------------------------------------- shared helpers

def test_pairwise_sq_distances_against_brute_force():
    g = torch.Generator().manual_seed(1)
    x = 100.0 + torch.randn(7, 300, generator=g)  # large common component, small spread
    ref = ((x.double()[:, None, :] - x.double()[None, :, :]) ** 2).sum(-1)
    got = C.pairwise_sq_distances(x)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-2)
    assert torch.equal(got, got.T) and (torch.diagonal(got) == 0).all()


def test_pairwise_helpers_with_huge_and_nan_rows():
    x = honest_plus(6, 10_000)  # 1e30² · 1e4 overflows float32
    x[2] = 1e30
    x[4, 3] = float("nan")
    dist = C.pairwise_sq_distances(x)
    assert not torch.isnan(dist).any()
    assert torch.isinf(dist[4, [0, 1, 2, 3, 5]]).all() and dist[4, 4] == 0
    assert dist[2, 0] > 1e60 and math.isfinite(float(dist[2, 0]))
    keep = [0, 1, 3, 5]
    ref = ((x.double()[keep][:, None] - x.double()[keep][None]) ** 2).sum(-1)
    assert torch.allclose(dist[keep][:, keep], ref, rtol=1e-4)
    cos = C.pairwise_cosine(x)
    assert not torch.isnan(cos).any() and cos.abs().max() <= 1.0
    assert cos[2, 0] > 0.9 and cos[4, 0] == 0.0
    to = C.cosine_to(x, x[0])
    assert not torch.isnan(to).any() and to[0] == pytest.approx(1.0) and to[4] == 0.0
    norms = C.row_norms(x)
    assert norms[2] == pytest.approx(1e30 * 100.0, rel=1e-5) and math.isinf(float(norms[4]))
    ok = C.finite_rows(torch.tensor([[3e38, 3e38], [1.0, float("inf")], [0.0, 0.0]]))
    assert ok.tolist() == [True, False, True]  # a finite row whose sum overflows is finite


def test_robust_zscores_and_mean_of():
    z = C.robust_zscores(torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0, float("nan")]))
    assert z[4] > 10 and math.isinf(float(z[5])) and abs(float(z[2])) < 1e-12
    assert C.robust_zscores(torch.ones(4)).tolist() == [0.0] * 4
    x = torch.tensor([[1.0, 1.0], [float("nan"), 0.0], [3.0, 3.0]])
    assert C.mean_of(x, torch.tensor([1.0, 0.0, 1.0])).tolist() == [2.0, 2.0]
    assert C.mean_of(x, torch.zeros(3)).tolist() == [0.0, 0.0]
    assert np.allclose(C.coordinate_median(torch.tensor([[1.0], [5.0], [2.0], [9.0]])).numpy(),
                       [3.5])


# ---------------------------------------------------------------- properties

@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 9), d=st.integers(1, 6), f=st.integers(0, 3),
       seed=st.integers(0, 10_000))
def test_krum_scores_match_definition(n, d, f, seed):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    dist = ((x.double()[:, None] - x.double()[None]) ** 2).sum(-1)
    k = min(max(n - f - 2, 1), n - 1)
    expected = torch.stack([torch.sort(torch.cat([dist[i, :i], dist[i, i + 1:]])).values[:k]
                            .sum() for i in range(n)])
    got = krum_scores(C.pairwise_sq_distances(x), f)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_pipeline_nonfinite_rows_flagged_and_budgeted():
    n, d = 9, 40
    x = honest_plus(n, d)
    x[0] = float("nan")
    x[1] = -30.0
    pipe = make("pipeline", layers=["norm_clip", "multikrum"])
    v = pipe(x, ctx_for(x, f=2))
    # norm_clip flags the NaN row; multikrum then runs with f = 2 − 1 = 1 on 8 rows
    assert flags(v) == [0, 1]
    assert torch.isfinite(v.aggregate).all() and v.weights.sum() == pytest.approx(1.0)


@pytest.mark.filterwarnings("error")
def test_identical_and_zero_updates():
    for x in (torch.ones(6, 10), torch.zeros(6, 10)):
        for name in ROBUST + ["reputation", "norm_clip"]:
            v = setup(make(name), 6, 10)(x, ctx_for(x, f=1))
            assert torch.equal(v.aggregate, x[0]), name
            assert v.weights.sum() == pytest.approx(1.0)
