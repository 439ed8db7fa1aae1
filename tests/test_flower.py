"""byzbench defenses as Flower strategies (byzbench.flower, the `flower` extra).

Most tests drive the strategy in process (configure_train → hand-made replies →
aggregate_train); one runs the example app with Flower's simulation engine. Without flwr
they skip, except the test of the missing-Flower message."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).parents[1]


def test_missing_flower_gives_one_line_naming_the_extra():
    code = ("import sys; sys.modules['flwr'] = None\n"
            "try:\n    import byzbench.flower\n"
            "except ImportError as e:\n    print('ERR', e)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("ERR")]
    assert lines == ["ERR byzbench.flower needs Flower: pip install 'byzbench[flower]'"], out


@pytest.fixture(scope="module")
def fl():
    pytest.importorskip("flwr")
    from flwr.supercore.task_identity import TaskIdentity

    import byzbench.flower as fl

    # messages built outside a running Flower app need a task identity (the server's)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    return fl


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return list(self.nodes)


def initial_arrays():
    from flwr.app import Array, ArrayRecord
    g = np.random.default_rng(0)
    return ArrayRecord({"w": Array(g.normal(size=(4, 3)).astype(np.float32)),
                        "b": Array(g.normal(size=(3,)).astype(np.float32)),
                        "steps": Array(np.array([7], dtype=np.int64))})


def reply(msg, arrays, num_examples=10, metrics=None):
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
    content = RecordDict({"metrics": MetricRecord({"num-examples": num_examples,
                                                   **(metrics or {})})})
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v))
                                         for k, v in arrays.items()})
    return Message(content, reply_to=msg)


def honest(msg, seed, scale=0.1):
    g = np.random.default_rng(seed)
    sent = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    return {k: (v + scale * g.normal(size=v.shape).astype(v.dtype)) if v.dtype.kind == "f"
            else v for k, v in sent.items()}


def flipped(msg, seed):
    sent = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    good = honest(msg, seed)
    return {k: sent[k] - 4 * (good[k] - sent[k]) for k in sent}


def one_round(strategy, arrays, nodes, make, server_round=1):
    from flwr.app import ConfigRecord
    msgs = list(strategy.configure_train(server_round, arrays, ConfigRecord({}),
                                         FakeGrid(nodes)))
    replies = [make(m) for m in msgs]
    return strategy.aggregate_train(server_round, replies)


def replay(fl, strategy):
    """A fresh defense from the same spec and setup, run on every recorded round's update
    matrix: the aggregates byzbench itself computes."""
    from byzbench.defenses.base import RoundContext
    from byzbench.engine.simulation import build
    from byzbench.registry import DEFENSES
    from byzbench.seeding import torch_generator
    defense = build(DEFENSES, fl.validate_spec(strategy.spec.model_dump()))
    defense.setup(strategy.defense.cell)
    out = []
    for rep in strategy.history:
        r = rep.server_round - 1
        ctx = RoundContext(round=r, client_ids=torch.tensor(rep.client_ids),
                           num_samples=torch.tensor(rep.num_samples, dtype=rep.updates.dtype),
                           f=rep.f, generator=torch_generator(strategy.seed, "defense", r),
                           global_params=rep.global_params, messages=rep.messages,
                           nonce=rep.nonce)
        out.append(defense(rep.updates, ctx))
    return out


@pytest.mark.parametrize("spec,flags", [
    ("median", False), ({"name": "trimmed_mean", "beta": 0.1}, False), ("dnc", True),
    ("multikrum", True), ("foolsgold", False), ("reputation", False),
    ("centered_clipping", False), ("bucketing+krum", False)])
def test_aggregate_equals_byzbench_defense_and_flags_the_flipper(fl, spec, flags):
    """Same aggregate as byzbench's own defense on the same matrix (1e-6), three rounds
    (stateful defenses keep their state per node); the rules that detect a ×4 sign flip
    flag it."""
    nodes = [9_000_000_000_000_000_000 + 7 * i for i in range(10)]   # uint64-sized ids
    strategy = fl.RobustStrategy(spec, assumed_fraction=0.1, keep_updates=True,
                                 min_available_nodes=10)
    arrays = initial_arrays()
    for rnd in (1, 2, 3):
        order = {}

        def make(m, rnd=rnd, order=order):
            node = m.metadata.dst_node_id
            order[node] = len(order)
            seed = 100 * rnd + nodes.index(node)
            return reply(m, flipped(m, seed) if node == nodes[3] else honest(m, seed))

        new, metrics = one_round(strategy, arrays, nodes, make, rnd)
        rep = strategy.history[-1]
        # layout kept: key order, shapes, dtypes
        assert list(new.keys()) == ["w", "b", "steps"]
        for k in new.keys():
            assert new[k].numpy().shape == arrays[k].numpy().shape
            assert new[k].numpy().dtype == arrays[k].numpy().dtype
        assert int(new["steps"].numpy()[0]) == 7
        expected = replay(fl, strategy)[-1].aggregate
        theta = rep.global_params
        got = torch.from_numpy(np.concatenate([new[k].numpy().reshape(-1).astype(np.float32)
                                               for k in new.keys()]))
        assert torch.allclose(got, theta + expected, atol=1e-6, rtol=0)
        assert metrics["byzbench.rows"] == 10 and metrics["byzbench.rejected"] == 0
        assert metrics["byzbench.agg-ms"] >= 0
        if flags:
            assert nodes[3] in metrics["byzbench.flagged-node-ids"], (spec, metrics)
        # client ids are stable per node, whatever order the replies come in
        assert rep.client_ids == [strategy.client_index(n) for n in rep.node_ids]
        arrays = new
    assert sorted(strategy.history[0].client_ids) == list(range(10))


def test_bad_replies_are_rejected_counted_and_never_crash(fl):
    from flwr.app import Error, Message
    nodes = list(range(1, 11))
    strategy = fl.RobustStrategy("median", f=3, min_available_nodes=2)
    bad = {}

    def make(m):
        node = m.metadata.dst_node_id
        good = honest(m, node)
        if node == 1:
            bad[node] = "missing_arrays"
            return reply(m, None)
        if node == 2:
            bad[node] = "wrong_shape"
            return reply(m, {**good, "w": np.zeros((3, 4), np.float32)})
        if node == 3:
            bad[node] = "wrong_keys"
            return reply(m, {"b": good["b"], "w": good["w"], "steps": good["steps"]})
        if node == 4:
            bad[node] = "nonfinite"
            return reply(m, {**good, "b": np.full(3, np.nan, np.float32)})
        if node == 5:
            bad[node] = "error_reply"
            return Message(Error(code=0, reason="client crashed"), reply_to=m)
        if node == 6:
            bad[node] = "missing_num_examples"
            msg = reply(m, good)
            del msg.content["metrics"]["num-examples"]
            return msg
        return reply(m, good)

    new, metrics = one_round(strategy, initial_arrays(), nodes, make)
    assert new is not None
    assert metrics["byzbench.rejected"] == 6
    assert sorted(metrics["byzbench.rejected-node-ids"]) == [1, 2, 3, 4, 5, 6]
    assert metrics["byzbench.rows"] == 4
    assert metrics["byzbench.f"] == 0            # each rejection counts against f = 3
    assert strategy.history[-1].rejected == bad
    # nothing usable at all: no new arrays, still metrics
    new, metrics = one_round(strategy, initial_arrays(), [1, 5], make, 2)
    assert new is None and metrics["byzbench.rejected"] == 2


def test_round_the_rule_cannot_run_keeps_the_model_and_says_why(fl):
    strategy = fl.RobustStrategy("krum", f=2, min_available_nodes=4)
    new, metrics = one_round(strategy, initial_arrays(), [1, 2, 3, 4],
                             lambda m: reply(m, honest(m, 0)))
    assert new is None and metrics["byzbench.skipped"] == 1
    assert "krum" in strategy.history[-1].skipped


def test_spec_is_validated_as_in_a_grid(fl, monkeypatch):
    with pytest.raises(fl.ConfigError, match="did you mean 'krum'"):
        fl.RobustStrategy("krun")
    with pytest.raises(fl.ConfigError, match="unknown parameter 'betta'"):
        fl.RobustStrategy({"name": "trimmed_mean", "betta": 0.1})
    assert fl.RobustStrategy({"name": "trimmed_mean", "beta": 0.1}).defense.params.beta == 0.1
    assert [x.name for x in fl.RobustStrategy("nnm+median").defense.layers] == ["nnm", "median"]
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "plugin"))
    s = fl.RobustStrategy("byzbench_example.median_of_means:MedianOfMeans", f=1)
    assert type(s.defense).__name__ == "MedianOfMeans"
    with pytest.raises(ValueError, match="public_keys"):
        fl.RobustStrategy("ecdsa+multikrum")
    with pytest.raises(ValueError, match="server_update"):
        fl.RobustStrategy("fltrust")


def _keys(fl, names, scheme="ecdsa-p256"):
    d = tempfile.mkdtemp()
    fl.generate_keys(d, names, scheme)
    return d, fl.load_public_keys(d)


@pytest.mark.parametrize("scheme", ["ecdsa-p256", "ed25519"])
def test_signed_replies_verify_and_tampering_is_flagged(fl, scheme):
    from flwr.app import Context, RecordDict
    nodes = [11, 12, 13, 14, 15, 16]
    names = {n: f"c{n}" for n in nodes}
    d, pub = _keys(fl, list(names.values()), scheme)
    keys = {n: pub[names[n]] for n in nodes[:-1]}        # node 16 never enrolled
    spec = {"name": "pipeline", "layers": [{"name": "ecdsa", "scheme": scheme}, "median"]}
    strategy = fl.RobustStrategy(spec, f=1, public_keys=keys, keep_updates=True,
                                 min_available_nodes=6)

    def make(m):
        node = m.metadata.dst_node_id
        ctx = Context(run_id=1, node_id=node, node_config={}, state=RecordDict(),
                      run_config={})
        mod = fl.signing_mod(lambda c: (names[node], fl.load_private_key(
            Path(d) / f"{names[node]}.key")))
        out = mod(m, ctx, lambda msg, c: reply(msg, honest(msg, node)))
        if node == 12:   # tampered in transit after signing
            arrays = {k: v.numpy() for k, v in out.content["arrays"].items()}
            arrays["b"] = arrays["b"] + 1.0
            sig = out.content[fl.SIGNATURE_RECORD]
            out = reply(m, arrays)
            out.content[fl.SIGNATURE_RECORD] = sig
        if node == 13:   # re-labelled as client 0 in transit: the signature covers the id
            out.content[fl.SIGNATURE_RECORD]["client-id"] = strategy.client_index(11)
        return out

    new, metrics = one_round(strategy, initial_arrays(), nodes, make)
    assert new is not None
    assert sorted(metrics["byzbench.flagged-node-ids"]) == [12, 13, 16]
    assert metrics["byzbench.verify-ms"] > 0
    reasons = strategy.history[-1].verdict.diagnostics["0.ecdsa.rejection"]
    by_node = dict(zip(strategy.history[-1].node_ids, reasons))
    assert by_node == {11: None, 12: "bad_signature", 13: "bad_signature", 14: None,
                       15: None, 16: "unknown_client"}


def test_enrollment_binds_nodes_to_registered_keys_by_proof_of_possession(fl):
    from flwr.app import Context, RecordDict
    d, pub = _keys(fl, ["a", "b"])
    holders = {21: ("a", fl.load_private_key(Path(d) / "a.key")),
               22: ("b", fl.load_private_key(Path(d) / "b.key")),
               23: ("a", None)}                        # impostor: claims 'a'

    class Grid(FakeGrid):
        def send_and_receive(self, messages, timeout=None):
            out = []
            for m in messages:
                node = m.metadata.dst_node_id
                name, key = holders[node]
                if key is None:
                    key = fl.load_private_key(Path(_imp) / "a.key")
                ctx = Context(run_id=1, node_id=node, node_config={}, state=RecordDict(),
                              run_config={})
                out.append(fl.enroll_handler(lambda c, name=name, key=key: (name, key))(m, ctx))
            return out

    _imp = tempfile.mkdtemp()
    fl.generate_keys(_imp, ["a"])
    got = fl.enroll_nodes(Grid([21, 22, 23]), pub, timeout=1, min_nodes=3)
    assert set(got) == {21, 22} and got.names == {21: "a", 22: "b"}


def test_fltrust_runs_with_a_server_update_hook(fl):
    calls = []

    def server_update(arrays, server_round):
        calls.append(server_round)
        from flwr.app import Array, ArrayRecord
        return ArrayRecord({k: Array(np.ascontiguousarray(v.numpy() + 0.05))
                            if v.numpy().dtype.kind == "f" else v
                            for k, v in arrays.items()})

    strategy = fl.RobustStrategy("fltrust", f=1, server_update=server_update,
                                 min_available_nodes=5)
    nodes = [1, 2, 3, 4, 5]

    def make(m):
        node = m.metadata.dst_node_id
        sent = {k: v.numpy() for k, v in m.content["arrays"].items()}
        sign = -1.0 if node == 5 else 1.0
        return reply(m, {k: v + sign * 0.05 + 0.01 * node if v.dtype.kind == "f" else v
                         for k, v in sent.items()})

    new, metrics = one_round(strategy, initial_arrays(), nodes, make)
    assert calls == [1] and new is not None
    assert metrics["byzbench.flagged-node-ids"] == [5]


def test_example_app_in_flower_simulation_flags_the_sign_flipper(fl):
    pytest.importorskip("ray")
    sys.path.insert(0, str(ROOT))
    try:
        from examples.flower.run import simulate
    finally:
        sys.path.remove(str(ROOT))
    out: dict = {}
    simulate("ecdsa+multikrum", clients=5, rounds=2, malicious=(0,), out=out)
    strategy, names = out["strategy"], out["names"]
    flipper = next(n for n, name in names.items() if name == "client-0")
    assert len(strategy.history) == 2
    for rep, mine in zip(strategy.history, replay(fl, strategy)):
        assert rep.rejected == {} and len(rep.node_ids) == 5
        assert rep.flagged_nodes == [flipper]
        assert torch.allclose(rep.verdict.aggregate, mine.aggregate, atol=1e-6, rtol=0)
    # the global arrays Flower ends with are θ₁ + aggregate of round 2
    final = out["result"].arrays
    last = strategy.history[-1]
    flat = np.concatenate([final[k].numpy().reshape(-1) for k in final.keys()])
    assert np.allclose(flat, (last.global_params + last.verdict.aggregate).numpy(), atol=1e-6)


def _all_defenses():
    from byzbench.registry import DEFENSES
    return sorted(DEFENSES.names()) if hasattr(DEFENSES, "names") else []


@pytest.mark.parametrize("name", _all_defenses())
def test_every_registered_defense_runs_as_a_strategy(fl, name):
    """With keys for the signing defenses and a root-data hook for FLTrust, every registered
    defense aggregates a Flower round of 12 replies."""
    nodes = list(range(31, 43))
    names = {n: f"k{n}" for n in nodes}
    kwargs: dict = {}
    signer = None
    if name in ("ecdsa", "signguard", "pipeline"):
        d, pub = _keys(fl, list(names.values()))
        kwargs["public_keys"] = {n: pub[names[n]] for n in nodes}
        signer = {n: fl.load_private_key(Path(d) / f"{names[n]}.key") for n in nodes}
    if name == "fltrust":
        kwargs["server_update"] = lambda arrays, r: arrays
    strategy = fl.RobustStrategy(name, f=2, min_available_nodes=12, **kwargs)

    def make(m):
        node = m.metadata.dst_node_id

        def train(msg, c):
            return reply(msg, honest(msg, node))

        if signer is None:
            return train(m, None)
        from flwr.app import Context, RecordDict
        ctx = Context(run_id=1, node_id=node, node_config={}, state=RecordDict(),
                      run_config={})
        return fl.signing_mod(lambda c: (names[node], signer[node]))(m, ctx, train)

    new, metrics = one_round(strategy, initial_arrays(), nodes, make)
    assert metrics["byzbench.rows"] == 12 and metrics["byzbench.rejected"] == 0
    assert new is not None or metrics["byzbench.skipped"] == 1, strategy.history[-1].skipped


def test_clients_sign_ecdsa_in_low_s_form_the_only_one_the_server_accepts(fl):
    """Every ECDSA signature a client mod makes (crypto.sign_bytes) is low-S (S ≤ n/2): a high-S one would be
    rejected by byzbench.crypto's verification (half of random signatures are high-S)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    from byzbench.crypto import sign_bytes

    key = ec.generate_private_key(ec.SECP256R1())
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    for i in range(40):
        _, s = decode_dss_signature(sign_bytes(key, b"message %d" % i))
        assert s <= order // 2
