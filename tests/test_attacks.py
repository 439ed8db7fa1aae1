"""Attack suite: hand computations for every attack, threat-model knobs, and transport
attacks against the real signature code."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzbench.attacks.base import AttackContext, AttackSetup
from byzbench.attacks.model import alie_z
from byzbench.crypto import ClientKeyring, Rejection
from byzbench.registry import ATTACKS


def make(name: str, **kwargs):
    cls = ATTACKS.get(name)
    return cls(cls.Params(**kwargs))


def setup_for(attack, num_clients: int = 10, input_shape=(1, 8, 8), num_classes: int = 10):
    attack.setup(AttackSetup(num_clients=num_clients, num_classes=num_classes,
                             input_shape=tuple(input_shape), rounds=5, seed=0,
                             defense_name="fedavg", device=torch.device("cpu")))
    return attack


def ctx_for(n: int, malicious: list[int], round_: int = 0, knowledge: str = "full",
            seed: int = 0, nonce: bytes | None = None, ids: list[int] | None = None
            ) -> AttackContext:
    mal = torch.zeros(n, dtype=torch.bool)
    mal[malicious] = True
    ref = ~mal if knowledge == "full" else mal.clone()
    gen = torch.Generator().manual_seed(seed)
    client_ids = torch.tensor(ids if ids is not None else list(range(n)), dtype=torch.long)
    return AttackContext(round=round_, client_ids=client_ids, malicious=mal, reference=ref,
                         generator=gen, defense_name="fedavg", nonce=nonce)


SMALL = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])


# --------------------------------------------------------------------------- registry


def test_every_attack_documents_itself():
    expected = {"none", "label_flip", "backdoor", "sign_flip", "scaling", "gaussian", "alie",
                "ipm", "minmax", "minsum", "mimic", "nonfinite", "tamper", "replay",
                "impersonate"}
    assert expected <= set(ATTACKS.names())
    for name, cls in ATTACKS.items():
        assert cls.__doc__ and cls.__doc__.strip(), name
        assert cls.stage in ("data", "update", "transport"), name
        if name != "none":
            assert cls.paper, name
        for field, info in cls.Params.model_fields.items():
            assert info.description, (name, field)
        cls(cls.Params())  # defaults construct


def test_unknown_parameter_is_rejected():
    with pytest.raises(ValueError):
        make("ipm", eps=3)
    with pytest.raises(ValueError):
        make("label_flip", source=1)  # target missing


# ------------------------------------------------------------------------ model poisoning


def test_alie_z_for_n50_f24_by_the_formula():
    n, f = 50, 24
    s = math.floor(n / 2 + 1) - f                      # 26 - 24 = 2
    assert s == 2
    expected = statistics.NormalDist().inv_cdf((n - s) / n)  # Φ⁻¹(0.96)
    assert alie_z(n, f) == pytest.approx(expected, rel=1e-9)
    assert alie_z(n, f) == pytest.approx(1.7507, abs=1e-4)


def test_alie_sends_mean_minus_z_std_of_benign_rows():
    x = torch.tensor([[1.0, 0.0], [3.0, 4.0], [5.0, 8.0], [100.0, -100.0]])
    out = make("alie", z=2.0).poison_updates(x, ctx_for(4, [3]))
    benign = x[:3]
    expected = benign.mean(0) - 2.0 * benign.std(0)    # [3 - 4, 4 - 8]
    assert torch.allclose(out[3], torch.tensor([-1.0, -4.0]))
    assert torch.allclose(out[3], expected)
    assert torch.equal(out[:3], x[:3])
    plus = make("alie", z=2.0, direction="plus", unbiased=False).poison_updates(
        x, ctx_for(4, [3]))
    assert torch.allclose(plus[3], benign.mean(0) + 2.0 * benign.std(0, correction=0))


def test_alie_default_z_uses_round_n_and_f():
    attack = make("alie")
    x = torch.randn(10, 5, generator=torch.Generator().manual_seed(1))
    attack.poison_updates(x, ctx_for(10, [0, 1, 2]))
    s = math.floor(10 / 2 + 1) - 3
    assert attack.last_z == pytest.approx(statistics.NormalDist().inv_cdf((10 - s) / 10))


def test_ipm_on_small_matrix():
    out = make("ipm").poison_updates(SMALL, ctx_for(4, [3]))
    assert torch.allclose(out[3], torch.tensor([-0.3, -0.4]))   # -0.1 × mean(rows 0..2)
    assert torch.equal(out[:3], SMALL[:3])
    out = make("ipm", epsilon=100).poison_updates(SMALL, ctx_for(4, [2, 3]))
    assert torch.allclose(out[2:], torch.tensor([[-200.0, -300.0]] * 2))


def test_sign_flip_on_small_matrix():
    out = make("sign_flip").poison_updates(SMALL, ctx_for(4, [2, 3]))
    assert torch.equal(out[2:], -SMALL[2:])
    assert torch.equal(out[:2], SMALL[:2])
    out = make("sign_flip", reference="mean").poison_updates(SMALL, ctx_for(4, [2, 3]))
    assert torch.allclose(out[2:], torch.tensor([[-2.0, -3.0]] * 2))
    out = make("sign_flip", collude=True).poison_updates(SMALL, ctx_for(4, [2, 3]))
    assert torch.allclose(out[2:], torch.tensor([[-6.0, -7.0]] * 2))


def test_scaling_default_factor_is_number_of_clients():
    attack = setup_for(make("scaling"), num_clients=20)
    out = attack.poison_updates(SMALL, ctx_for(4, [1]))
    assert torch.equal(out[1], 20 * SMALL[1])
    assert torch.equal(out[[0, 2, 3]], SMALL[[0, 2, 3]])
    out = make("scaling", factor=3, collude=True).poison_updates(SMALL, ctx_for(4, [2, 3]))
    assert torch.allclose(out[2:], torch.tensor([[18.0, 21.0]] * 2))


def test_gaussian_modes_and_collusion():
    x = torch.zeros(6, 1000)
    out = make("gaussian", sigma=2.0).poison_updates(x, ctx_for(6, [4, 5]))
    assert torch.equal(out[:4], x[:4])
    assert out[4:].std().item() == pytest.approx(2.0, rel=0.05)
    assert not torch.equal(out[4], out[5])
    out = make("gaussian", collude=True).poison_updates(x, ctx_for(6, [4, 5]))
    assert torch.equal(out[4], out[5])
    ones = torch.ones(6, 1000)
    out = make("gaussian", sigma=0.5, mode="additive").poison_updates(ones, ctx_for(6, [5]))
    assert out[5].mean().item() == pytest.approx(1.0, abs=0.1)
    assert (out[5] - 1).std().item() == pytest.approx(0.5, rel=0.1)


def _benign(k: int = 12, d: int = 30, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, d, generator=g) * 0.5 + torch.linspace(-1, 1, d)


def _sq_dist(rows: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (rows.double() - v.double()).square().sum(dim=1)


def _pairwise(rows: torch.Tensor) -> torch.Tensor:
    r = rows.double()
    return (r[:, None, :] - r[None, :, :]).square().sum(dim=2)


def _perturbation(benign: torch.Tensor, kind: str) -> torch.Tensor:
    mean = benign.double().mean(0)
    if kind == "unit":
        return -mean / mean.norm()
    if kind == "sign":
        return -torch.sign(mean)
    return -benign.double().std(0)


@pytest.mark.parametrize("kind", ["unit", "sign", "std"])
def test_minmax_gamma_is_maximal_under_its_constraint(kind):
    x = torch.cat([_benign(), torch.zeros(3, 30)])
    mal = [12, 13, 14]
    attack = make("minmax", perturbation=kind)
    out = attack.poison_updates(x, ctx_for(15, mal))
    benign = x[:12]
    limit = _pairwise(benign).max()
    gamma = attack.last_gamma
    assert gamma > 0
    assert torch.equal(out[12], out[13]) and torch.equal(out[13], out[14])
    assert torch.equal(out[:12], x[:12])
    assert _sq_dist(benign, out[12]).max() <= limit
    mean, p = benign.double().mean(0), _perturbation(benign, kind)
    assert torch.allclose(out[12].double(), mean + gamma * p, atol=1e-5)
    assert _sq_dist(benign, mean + 1.05 * gamma * p).max() > limit


@pytest.mark.parametrize("kind", ["unit", "sign", "std"])
def test_minsum_gamma_is_maximal_under_its_constraint(kind):
    x = torch.cat([_benign(), torch.zeros(3, 30)])
    attack = make("minsum", perturbation=kind)
    out = attack.poison_updates(x, ctx_for(15, [12, 13, 14]))
    benign = x[:12]
    limit = _pairwise(benign).sum(dim=1).min()
    gamma = attack.last_gamma
    assert gamma > 0
    assert _sq_dist(benign, out[12]).sum() <= limit
    mean, p = benign.double().mean(0), _perturbation(benign, kind)
    assert _sq_dist(benign, mean + 1.05 * gamma * p).sum() > limit


def test_minmax_without_grow_is_capped_like_the_authors_search():
    x = torch.cat([_benign() * 100, torch.zeros(1, 30)])   # boundary far beyond 2·γ_init
    capped = make("minmax", perturbation="unit", grow=False)
    capped.poison_updates(x, ctx_for(13, [12]))
    grown = make("minmax", perturbation="unit")
    grown.poison_updates(x, ctx_for(13, [12]))
    assert capped.last_gamma <= 20.0 < grown.last_gamma


def test_mimic_copies_one_honest_update():
    x = _benign(10, 8)
    x[8:] = 0
    attack = make("mimic")
    out = attack.poison_updates(x, ctx_for(10, [8, 9]))
    assert torch.equal(out[8], out[9])
    assert attack.target_id is not None and attack.target_id < 8
    assert torch.equal(out[8], x[attack.target_id])
    # after the warm-up the target is fixed by id
    first = attack.target_id
    out = attack.poison_updates(_benign(10, 8, seed=9), ctx_for(10, [8, 9], round_=1))
    assert attack.target_id == first
    seeded = [make("mimic", choice="seeded") for _ in range(2)]
    picks = [a.poison_updates(x, ctx_for(10, [8, 9], seed=5)) for a in seeded]
    assert torch.equal(picks[0], picks[1])
    assert seeded[0].target_id < 8


def test_mimic_heuristic_picks_the_extreme_client_along_the_main_direction():
    x = torch.zeros(6, 3)
    x[:5, 0] = torch.tensor([0.0, 1.0, -1.0, 0.5, 4.0])  # spread only along axis 0
    attack = make("mimic")
    attack.poison_updates(x, ctx_for(6, [5]))
    assert attack.target_id in (2, 4)   # the ends of the principal axis (sign of z is free)


@pytest.mark.parametrize("mode", ["nan", "inf", "mixed"])
def test_nonfinite_only_in_malicious_rows(mode):
    x = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    out = make("nonfinite", mode=mode).poison_updates(x, ctx_for(5, [1, 3]))
    finite_rows = torch.isfinite(out).all(dim=1)
    assert finite_rows.tolist() == [True, False, True, False, True]
    assert not torch.isfinite(out[[1, 3]]).any()
    if mode == "nan":
        assert torch.isnan(out[[1, 3]]).all()
    if mode == "inf":
        assert torch.isposinf(out[[1, 3]]).all()
    if mode == "mixed":
        bad = out[[1, 3]]
        assert torch.isnan(bad).any() and torch.isposinf(bad).any() and torch.isneginf(bad).any()
    partial = make("nonfinite", fraction=0.1).poison_updates(x, ctx_for(5, [1, 3]))
    assert (~torch.isfinite(partial[[1, 3]])).sum(dim=1).ge(1).all()
    assert torch.isfinite(partial[[0, 2, 4]]).all()


def test_knowledge_own_uses_only_malicious_rows():
    x = torch.tensor([[100.0, 100.0], [-50.0, 7.0], [1.0, 2.0], [3.0, 6.0]])
    ctx = ctx_for(4, [2, 3], knowledge="partial")
    assert make("ipm", knowledge="own").knowledge == "partial"  # the old name still works
    out = make("ipm", epsilon=1.0, knowledge="own").poison_updates(x, ctx)
    assert torch.allclose(out[2:], torch.tensor([[-2.0, -4.0]] * 2))
    out = make("alie", z=1.0, knowledge="own").poison_updates(x, ctx)
    own = x[2:]
    assert torch.allclose(out[2], own.mean(0) - own.std(0))
    out = make("sign_flip", reference="mean", knowledge="own").poison_updates(x, ctx)
    assert torch.allclose(out[3], -own.mean(0))
    attack = make("minmax", knowledge="own")
    out = attack.poison_updates(x, ctx)
    assert _sq_dist(own, out[2]).max() <= _pairwise(own).max() + 1e-9


# --------------------------------------------------------------------------- data poisoning


def test_label_flip_full_and_targeted():
    attack = setup_for(make("label_flip"), num_classes=10)
    x = torch.randn(6, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 7, 9, 3])
    x0, y0 = x.clone(), y.clone()
    xp, yp = attack.poison_data(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(x, x0) and torch.equal(y, y0)       # inputs untouched
    assert torch.equal(xp, x0)                             # features unchanged
    assert yp.tolist() == [9, 8, 7, 2, 0, 6]
    targeted = setup_for(make("label_flip", source=7, target=1))
    _, yt = targeted.poison_data(x, y, torch.Generator())
    assert yt.tolist() == [0, 1, 2, 1, 9, 3]
    with pytest.raises(ValueError, match="not a class"):
        setup_for(make("label_flip", source=12, target=1))


@pytest.mark.parametrize("shape", [(1, 8, 8), (64,), (3, 8, 8)])
def test_backdoor_changes_exactly_the_patch_of_poison_fraction_samples(shape):
    attack = setup_for(make("backdoor", size=2, value=5.0, poison_fraction=0.25, target=3),
                       input_shape=shape)
    m = 40
    g = torch.Generator().manual_seed(0)
    x = torch.rand(m, *shape, generator=g)                 # values < 1, patch value 5
    y = torch.randint(0, 10, (m,), generator=g)
    x0, y0 = x.clone(), y.clone()
    xp, yp = attack.poison_data(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(x, x0) and torch.equal(y, y0)
    changed = (xp != x).flatten(1).any(dim=1)
    assert int(changed.sum()) == 10                        # 0.25 × 40
    patch = attack.trigger_mask(shape)
    per_channel = shape[0] if len(shape) == 3 else 1
    assert int(patch.sum()) == 4 * per_channel
    diff = xp != x
    assert not diff[:, ~patch].any()                       # nothing outside the patch
    assert (xp[changed][:, patch] == 5.0).all()            # the whole patch on poisoned rows
    assert (yp[changed] == 3).all()
    assert torch.equal(yp[~changed], y[~changed])          # other labels unchanged
    # bottom-right corner of the image
    img = patch.reshape(-1, 8, 8)[0]
    assert img[6:, 6:].all() and int(img.sum()) == 4


def test_backdoor_triggered_testset_excludes_target_samples():
    attack = setup_for(make("backdoor", target=2, value=9.0))
    x = torch.zeros(5, 1, 8, 8)
    y = torch.tensor([2, 0, 2, 5, 1])
    xt, yt = attack.triggered_testset(x, y)
    assert xt.shape[0] == 3 and (yt == 2).all()
    assert (xt[:, 0, 6:, 6:] == 9.0).all() and int((xt != 0).sum()) == 3 * 4


def test_backdoor_default_value_is_fixed_from_training_data():
    attack = setup_for(make("backdoor", poison_fraction=1.0))
    x = torch.rand(4, 1, 8, 8) * 3
    xp, _ = attack.poison_data(x, torch.zeros(4, dtype=torch.long), torch.Generator())
    vmax = float(x.max())
    assert (xp[:, 0, 6:, 6:] == vmax).all()
    xt, _ = attack.triggered_testset(torch.zeros(2, 1, 8, 8), torch.tensor([1, 1]))
    assert (xt[:, 0, 6:, 6:] == vmax).all()


def test_backdoor_boost_scales_only_malicious_rows():
    out = make("backdoor", boost=10).poison_updates(SMALL, ctx_for(4, [0]))
    assert torch.equal(out[0], 10 * SMALL[0]) and torch.equal(out[1:], SMALL[1:])
    assert make("backdoor").poison_updates(SMALL, ctx_for(4, [0])) is SMALL


# ------------------------------------------------------------------------- threat model


def test_start_round_and_every():
    attack = make("ipm", start_round=2, every=3)
    assert [r for r in range(12) if attack.active(r)] == [2, 5, 8, 11]
    assert all(make("alie").active(r) for r in range(5))


def test_determinism_with_seeded_generator():
    x = torch.randn(8, 20, generator=torch.Generator().manual_seed(0))
    for name, kw in [("gaussian", {}), ("nonfinite", {"mode": "mixed", "fraction": 0.3}),
                     ("mimic", {"choice": "seeded"})]:
        a = make(name, **kw).poison_updates(x, ctx_for(8, [0, 1], seed=7))
        b = make(name, **kw).poison_updates(x, ctx_for(8, [0, 1], seed=7))
        assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan())
    bd = [setup_for(make("backdoor", poison_fraction=0.3)) for _ in range(2)]
    data = torch.rand(20, 1, 8, 8), torch.randint(0, 10, (20,))
    p = [a.poison_data(*data, torch.Generator().manual_seed(4)) for a in bd]
    assert torch.equal(p[0][0], p[1][0]) and torch.equal(p[0][1], p[1][1])
    t = [make("tamper", fraction=0.5).intercept(x, None, ctx_for(8, [], seed=3))
         for _ in range(2)]
    assert torch.equal(t[0].touched, t[1].touched) and torch.equal(t[0].updates, t[1].updates)


# -------------------------------------------------------------------------- transport


@pytest.fixture(scope="module")
def keyring():
    return ClientKeyring(range(6))


def _signed_round(keyring, updates, round_, nonce):
    messages, _ = keyring.sign_round(list(range(updates.shape[0])), round_, nonce, updates)
    return messages


def test_tamper_breaks_exactly_the_targeted_signatures(keyring):
    reg = keyring.public_registry()
    x = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    msgs = _signed_round(keyring, x, 0, b"n0")
    ctx = ctx_for(6, [1, 4], nonce=b"n0")
    res = make("tamper").intercept(x, msgs, ctx)
    assert res.touched.tolist() == [False, True, False, False, True, False]
    assert torch.equal(res.updates[[1, 4]], -x[[1, 4]])
    assert torch.equal(res.updates[[0, 2, 3, 5]], x[[0, 2, 3, 5]])
    assert res.messages == msgs                                # headers passed on
    valid, reasons = reg.verify_round(res.messages, res.updates, 0, b"n0")
    assert valid.tolist() == [True, False, True, True, False, True]
    assert reasons[1] == Rejection.BAD_SIGNATURE
    scaled = setup_for(make("tamper", mode="scale"), num_clients=6).intercept(x, msgs, ctx)
    assert torch.equal(scaled.updates[1], 6 * x[1])
    frac = make("tamper", fraction=0.5).intercept(x, msgs, ctx_for(6, [1], nonce=b"n0"))
    assert int(frac.touched.sum()) == 3
    valid, _ = reg.verify_round(frac.messages, frac.updates, 0, b"n0")
    assert (valid == ~frac.touched.numpy()).all()
    assert not make("tamper", start_round=1).intercept(x, msgs, ctx).touched.any()


def test_replay_resends_earlier_valid_messages(keyring):
    reg = keyring.public_registry()
    attack = setup_for(make("replay"), num_clients=6)
    x0 = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    m0 = _signed_round(keyring, x0, 0, b"n0")
    first = attack.intercept(x0, m0, ctx_for(6, [2, 5], round_=0, nonce=b"n0"))
    assert not first.touched.any()                             # nothing to replay yet
    assert torch.equal(first.updates, x0) and first.messages == m0
    x1 = torch.randn(6, 10, generator=torch.Generator().manual_seed(1))
    m1 = _signed_round(keyring, x1, 1, b"n1")
    res = attack.intercept(x1, m1, ctx_for(6, [2, 5], round_=1, nonce=b"n1"))
    assert res.touched.tolist() == [False, False, True, False, False, True]
    assert torch.equal(res.updates[[2, 5]], x0[[2, 5]])
    assert torch.equal(res.updates[[0, 1, 3, 4]], x1[[0, 1, 3, 4]])
    assert res.messages[2] == m0[2] and res.messages[0] == m1[0]
    valid, reasons = reg.verify_round(res.messages, res.updates, 1, b"n1")
    assert valid.tolist() == [True, True, False, True, True, False]
    assert reasons[2] == Rejection.WRONG_ROUND                 # signature itself is valid


def test_replay_without_signing_sends_stale_payloads():
    attack = make("replay", start_round=1)
    x0, x1 = torch.zeros(3, 4), torch.ones(3, 4)
    assert not attack.intercept(x0, None, ctx_for(3, [1], round_=0)).touched.any()
    res = attack.intercept(x1, None, ctx_for(3, [1], round_=1))
    assert res.messages is None and res.touched.tolist() == [False, True, False]
    assert torch.equal(res.updates[1], x0[1]) and torch.equal(res.updates[0], x1[0])


def test_impersonate_forges_messages_that_fail_verification(keyring):
    reg = keyring.public_registry()
    x = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    msgs = _signed_round(keyring, x, 3, b"n3")
    res = make("impersonate").intercept(x, msgs, ctx_for(6, [0, 3], round_=3, nonce=b"n3"))
    assert res.touched.tolist() == [True, False, False, True, False, False]
    assert torch.allclose(res.updates[0], -x.mean(0)) and torch.equal(res.updates[1], x[1])
    assert [m.client_id for m in res.messages] == list(range(6))
    assert res.messages[0] != msgs[0] and res.messages[1] == msgs[1]
    valid, reasons = reg.verify_round(res.messages, res.updates, 3, b"n3")
    assert valid.tolist() == [False, True, True, False, True, True]
    assert reasons[0] == Rejection.BAD_SIGNATURE


def test_impersonate_matches_ed25519_scheme():
    ring = ClientKeyring(range(3), scheme="ed25519")
    x = torch.randn(3, 4)
    msgs = _signed_round(ring, x, 0, b"n")
    res = make("impersonate", payload="gaussian").intercept(x, msgs,
                                                            ctx_for(3, [2], nonce=b"n"))
    assert len(res.messages[2].signature) == 64
    valid, _ = ring.public_registry().verify_round(res.messages, res.updates, 0, b"n")
    assert valid.tolist() == [True, True, False]


# ------------------------------------------------------------------- properties, devices


@settings(max_examples=25, deadline=None)
@given(k=st.integers(2, 12), d=st.integers(1, 40), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1e-3, 1.0, 1e3]), kind=st.sampled_from(["unit", "sign", "std"]),
       name=st.sampled_from(["minmax", "minsum"]))
def test_shejwalkar_constraint_holds_at_any_scale(k, d, seed, scale, kind, name):
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(k, d, generator=g) * scale + scale, torch.zeros(2, d)])
    attack = make(name, perturbation=kind)
    out = attack.poison_updates(x, ctx_for(k + 2, [k, k + 1]))
    benign = x[:k]
    dist = _sq_dist(benign, out[k])
    if name == "minmax":
        value, limit = dist.max(), _pairwise(benign).max()
    else:
        value, limit = dist.sum(), _pairwise(benign).sum(dim=1).min()
    assert value <= limit
    assert torch.isfinite(out).all()


def _all_update_and_transport_attacks():
    for name, cls in ATTACKS.items():
        # data attacks that also shape their update (backdoor's boost, neurotoxin, pgd)
        if cls.stage in ("update", "transport") or cls.poison_updates is not \
                ATTACKS.base.poison_updates:
            yield name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(_all_update_and_transport_attacks()))
def test_attacks_run_on_cuda(name):
    dev = torch.device("cuda")
    attack = setup_for(make(name), num_clients=8)
    x = torch.randn(8, 16, device=dev)
    ctx = ctx_for(8, [1, 5])
    ctx.malicious, ctx.reference = ctx.malicious.to(dev), ctx.reference.to(dev)
    ctx.client_ids = ctx.client_ids.to(dev)
    ctx.generator = torch.Generator(device=dev).manual_seed(0)
    if attack.stage == "transport":
        out = attack.intercept(x, None, ctx).updates
    else:
        out = attack.poison_updates(x, ctx)
    assert out.device.type == "cuda" and out.shape == x.shape
