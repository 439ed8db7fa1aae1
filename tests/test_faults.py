"""Fault injection: what an attacker, a careless grid file or a busy machine can throw at
byzbench, one test per class of issue 15 (each failed before its fix).

A. attacker-controlled message headers;  B. huge finite rows (±1e38, 3e38);
C. nearly parallel updates (cosines);     D. grid files that expand or cannot run;
E. the results directory;                 F. the regression gate.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from decimal import Decimal, getcontext
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from helpers import TINY_BASE, write_grid

import byzbench.api as bb
from byzbench.crypto import ClientKeyring, verify_signature
from byzbench.defenses.base import DefenseSetup, RoundContext
from byzbench.registry import DEFENSES

# the order of P-256's base point (SEC 2)
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# ------------------------------------------------------------------ helpers


def make(name: str, **params):
    cls = DEFENSES.get(name)
    return cls(cls.Params(**params))


def ctx_for(x: torch.Tensor, f: int = 0, messages=None, nonce=None, round_: int = 0
            ) -> RoundContext:
    n, d = x.shape
    return RoundContext(round=round_, client_ids=torch.arange(n), num_samples=torch.ones(n),
                        f=f, generator=torch.Generator().manual_seed(0),
                        global_params=torch.zeros(d), messages=messages, nonce=nonce)


def setup(defense, n: int, d: int, f: int = 0, keys=None):
    defense.setup(DefenseSetup(num_clients=n, clients_per_round=n, f=f, dim=d, seed=0,
                               device=torch.device("cpu"), public_keys=keys))
    return defense


# ------------------------------------------------ A. attacker-controlled message headers

HEADER_FAULTS = {
    "oversized nonce": lambda m: dataclasses.replace(m, nonce=b"\0" * 40_000),
    "round 2^63": lambda m: dataclasses.replace(m, round=2**63),
    "round -2^64": lambda m: dataclasses.replace(m, round=-2**64),
    "id 2^70": lambda m: dataclasses.replace(m, client_id=2**70),
    "id as float": lambda m: dataclasses.replace(m, client_id=float(m.client_id)),
    "nonce as str": lambda m: dataclasses.replace(m, nonce="abc"),
    "signature not DER": lambda m: dataclasses.replace(m, signature=b"\x30\x01"),
    "dropped (None)": lambda m: None,
    "not a message": lambda m: "garbage",
}


@pytest.mark.parametrize("defense", ["ecdsa", "signguard", "ecdsa+multikrum"])
@pytest.mark.parametrize("fault", list(HEADER_FAULTS))
def test_a_malformed_or_dropped_headers_are_rejections(defense, fault):
    n, d, nonce = 10, 50, b"n" * 16
    x = 1.0 + 0.1 * torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    keys = ClientKeyring(range(n))
    messages, _ = keys.sign_round(list(range(n)), 3, nonce, x)
    messages[2] = HEADER_FAULTS[fault](messages[2])
    if "+" in defense:
        rule = make("pipeline", layers=defense.split("+"))
    else:
        rule = make(defense)
    rule = setup(rule, n, d, f=1, keys=keys.public_registry())
    v = rule(x, ctx_for(x, f=1, messages=messages, nonce=nonce, round_=3))
    assert torch.isfinite(v.aggregate).all()
    assert bool(v.flagged[2]) and float(v.weights[2]) == 0.0


def test_a_fewer_messages_than_rows_pair_by_claimed_id():
    n, d, nonce = 6, 20, b"n" * 16
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    keys = ClientKeyring(range(n))
    messages, _ = keys.sign_round(list(range(n)), 0, nonce, x)
    del messages[4]                                     # dropped in transit
    x[1] = float("nan")                                 # and a non-finite row too
    rule = setup(make("ecdsa"), n, d, keys=keys.public_registry())
    v = rule(x, ctx_for(x, messages=messages, nonce=nonce))
    assert v.flagged.tolist() == [False, True, False, False, True, False]
    reasons = rule.verify(x[[0, 2, 3, 4, 5]], ctx_for(x, messages=messages, nonce=nonce)
                          .restrict(torch.tensor([0, 2, 3, 4, 5])))[1]
    assert reasons == [None, None, None, "missing", None]


def test_a_high_s_ecdsa_signatures_are_rejected():
    keys = ClientKeyring([0])
    registry = keys.public_registry()
    nonce, digest = b"n" * 16, b"d" * 32
    for _ in range(8):  # clients sign in low-S form
        msg = keys.sign(0, 0, nonce, digest)
        r, s = decode_dss_signature(msg.signature)
        assert s <= P256_ORDER // 2
    malleated = dataclasses.replace(msg, signature=encode_dss_signature(r, P256_ORDER - s))
    from byzbench.crypto import _ECDSA, signed_bytes

    data = signed_bytes(0, 0, nonce, digest)
    registry._keys[0].verify(malleated.signature, data, _ECDSA)  # cryptography accepts it
    assert verify_signature(registry._keys[0], "ecdsa-p256", msg.signature, data)
    assert not verify_signature(registry._keys[0], "ecdsa-p256", malleated.signature, data)
    assert registry._check(malleated, digest, 0, nonce).value == "bad_signature"


HEADER_PLUGIN = '''
import dataclasses
import json
from decimal import Decimal, getcontext
from typing import ClassVar, Literal

import torch
from pydantic import Field

from byzbench.attacks.base import Attack, AttackParams, Interception


class BadHeadersParams(AttackParams):
    mode: Literal["nonce", "round", "drop", "shorter"] = Field(
        "nonce", description="what the network attacker does to the victims' headers")


class BadHeaders(Attack):
    """Alters the headers of the targeted clients' signed messages in transit: a 40 kB
    nonce, a round of 2**63, a None (dropped) message, or a shorter list of messages."""

    stage: ClassVar[str] = "transport"
    paper: ClassVar[str] = "issue 15 fault injection"
    Params: ClassVar[type] = BadHeadersParams

    def intercept(self, updates, messages, ctx):
        touched = ctx.malicious.clone()
        if messages is None:
            return Interception(updates, None, touched)
        out = list(messages)
        victims = torch.nonzero(touched).squeeze(1).tolist()
        mode = self.params.mode
        for i in victims:
            if mode == "nonce":
                out[i] = dataclasses.replace(out[i], nonce=b"x" * 40_000)
            elif mode == "round":
                out[i] = dataclasses.replace(out[i], round=2**63)
            elif mode == "drop":
                out[i] = None
        if mode == "shorter":
            out = [m for i, m in enumerate(out) if i not in set(victims)]
        return Interception(updates, out, touched)
'''


def test_a_header_faults_in_a_run_are_detected_and_the_round_goes_on(tmp_path, monkeypatch):
    (tmp_path / "bad_headers_plugin.py").write_text(HEADER_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    grid = write_grid(tmp_path / "g.yaml", {
        "name": "hdr", "base": {**TINY_BASE, "clients": 10, "malicious_fraction": 0.2},
        "grid": {"attack": [{"name": "bad_headers_plugin:BadHeaders", "mode": m}
                            for m in ("nonce", "round", "drop", "shorter")],
                 "defense": ["ecdsa", "signguard"]}})
    try:
        summary = bb.run(grid, tmp_path / "res", workers=1)
        assert summary.ok and summary.done == 8, summary.failed
        cells = bb.load_results(tmp_path / "res").cells
        assert (cells["detection_rate"] == 1.0).all()
        assert not cells["diverged"].any()
        assert (cells[cells["defense"] == "ecdsa"]["fpr"] == 0.0).all()
    finally:
        sys.modules.pop("bad_headers_plugin", None)


# ------------------------------------------------ B. huge finite rows: ±1e38, 3e38

# rules documented as not bounding what a few huge rows contribute (README, Defenses):
# the undefended mean, signature checks (authenticity, not honesty), the two reweighting
# rules whose weights ignore magnitude (reputation: cosine to the median; foolsgold:
# similarity between clients, against sybils), and the pre-aggregation layers that, used
# alone, average what they pass on (nnm, bucketing, rlr)
NOT_MAGNITUDE_ROBUST = {"fedavg", "ecdsa", "reputation", "foolsgold", "nnm", "bucketing",
                        "rlr"}
HUGE_PATTERNS = {
    "±1e38 and 3e38 rows": [1e38, -1e38, 3e38],
    "three colluding 3e38 rows": [3e38, 3e38, 3e38],
    "mixed-sign rows whose sum overflows": "mixed",
    "one float32-max row": [torch.finfo(torch.float32).max],
}


@pytest.mark.parametrize("pattern", list(HUGE_PATTERNS))
@pytest.mark.parametrize("name", sorted(DEFENSES.names()))
def test_b_huge_finite_rows_stay_out_of_the_model(name, pattern):
    from byzbench.testing import _Round

    n, d, f = 20, 64, 4
    params = {}
    if name == "clustering" and pattern.startswith("mixed"):
        params = {"n_clusters": 4}  # k-means isolates at most k − 1 groups of outliers
    cls = DEFENSES.get(name)
    rnd = _Round(cls(cls.Params(**params)), n, d, seed=0)
    y = rnd.honest.clone()
    values = HUGE_PATTERNS[pattern]
    if values == "mixed":
        y[0] = 1e38
        y[0, ::2] = -1e38
        y[1] = 3e38
        y[2] = -3e38
        y[2, 1::3] = 1e38
    else:
        for i, value in enumerate(values):
            y[i] = value
    v = rnd.setup(cls(cls.Params(**params)), f)(y, rnd.context(y, f))
    assert torch.isfinite(v.aggregate).all() and torch.isfinite(v.weights).all()
    if name not in NOT_MAGNITUDE_ROBUST:
        # a huge row let through at any weight ≥ 1/n would make this ≥ 1e36
        bound = 10.0 * float(rnd.honest.abs().max())
        assert float(v.aggregate.abs().max()) <= bound, (name, pattern)
        theta = torch.zeros(d) + v.aggregate
        assert torch.isfinite(theta * theta).all()   # the model stays usable


# ------------------------------------------------ C. nearly parallel rows: cosines


def _exact_cosines(x: torch.Tensor) -> list[list[Decimal]]:
    """The cosines of the float32 rows ``x``, from their exact values in 60-digit decimals."""
    getcontext().prec = 60
    rows = [[Decimal(float(v)) for v in row] for row in x.tolist()]
    dots = [[sum(a * b for a, b in zip(r, s)) for s in rows] for r in rows]
    return [[dots[i][j] / (dots[i][i] * dots[j][j]).sqrt() for j in range(len(rows))]
            for i in range(len(rows))]


def test_c_cosines_of_nearly_parallel_rows_are_accurate():
    from byzbench.defenses.geometry import cosine_to, pairwise_cosine

    d = 2000
    base = torch.randn(d, generator=torch.Generator().manual_seed(3))
    x = base.repeat(6, 1)
    for k in range(1, 6):                      # row k differs from row 0 in one coordinate
        x[k, k] += 2.0 ** -10 * k              # 1 − cos ≈ 1e-10 .. 1e-8
    x[3] *= 1024.0                             # scaling (exact in float32) changes nothing
    exact = _exact_cosines(x)
    cos = pairwise_cosine(x)
    to0 = cosine_to(x, x[0])
    for i in range(6):
        for j in range(6):
            if i == j:
                continue
            gap = float(1 - exact[i][j])       # 1 − cos, known to 60 digits
            assert 0 < gap < 1e-7
            assert float(1 - cos[i, j]) == pytest.approx(gap, rel=1e-6), (i, j)
        if i:
            assert float(1 - to0[i]) == pytest.approx(float(1 - exact[i][0]), rel=1e-6)


def test_c_foolsgold_keeps_nearly_identical_honest_clients():
    from byzbench.defenses.foolsgold import foolsgold_weights

    g = torch.Generator().manual_seed(4)
    common = torch.randn(5000, generator=g)
    honest = common + 1e-4 * torch.randn(10, 5000, generator=g)   # 1 − cos ≈ 1e-8
    alpha = foolsgold_weights(honest)
    assert bool((alpha > 0).any()) and bool(torch.isfinite(alpha).all())
    identical = common.repeat(4, 1)                                # nothing to tell apart
    assert foolsgold_weights(identical).tolist() == [1.0] * 4
    rule = make("foolsgold")
    rule.setup(DefenseSetup(num_clients=10, clients_per_round=10, f=0, dim=5000, seed=0,
                            device=torch.device("cpu")))
    v = rule(honest, ctx_for(honest))
    assert not bool(v.flagged.all()) and float(v.aggregate.norm()) > 0


@pytest.mark.parametrize("name", ["flame", "clipped_clustering"])
def test_c_clustering_on_nearly_parallel_updates_sees_the_outlier(name):
    g = torch.Generator().manual_seed(5)
    common = torch.randn(5000, generator=g)
    x = common + 1e-5 * torch.randn(10, 5000, generator=g)        # honest: 1 − cos ≈ 1e-10
    x[0] = common + 3e-4 * torch.randn(5000, generator=g)          # 1 − cos ≈ 5e-8: far
    params = {"cluster_on": "updates", "noise_lambda": 0.0} if name == "flame" else {}
    rule = make(name, **params)
    rule.setup(DefenseSetup(num_clients=10, clients_per_round=10, f=1, dim=5000, seed=0,
                            device=torch.device("cpu")))
    v = rule(x, ctx_for(x, f=1))
    assert bool(v.flagged[0])
    if name == "flame":  # HDBSCAN admits the densest majority, ⌊n/2⌋ + 1 at least
        assert int((~v.flagged).sum()) >= 6
    else:
        assert v.flagged.tolist() == [True] + [False] * 9


# ------------------------------------------------ F. the regression gate

@pytest.fixture(scope="module")
def gate_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gate")
    grid = write_grid(tmp / "g.yaml", {"name": "gate", "base": TINY_BASE,
                                       "grid": {"seed": [0, 1]}})
    assert bb.run(grid, tmp / "res", workers=1).ok
    return tmp / "res"


def _check(run_dir, baseline, tmp_path, *extra):
    from typer.testing import CliRunner

    from byzbench.cli import app

    path = tmp_path / "base.json"
    path.write_text(json.dumps(baseline) if isinstance(baseline, dict) else baseline)
    return CliRunner().invoke(app, ["check", str(run_dir), "-b", str(path), *extra])


def _own_baseline(run_dir, tmp_path):
    from byzbench.regression import write_baseline

    return write_baseline(run_dir, tmp_path / "own.json")


def test_f_the_gate_cannot_be_bypassed_and_counts_each_finding_apart(gate_run, tmp_path):
    base = _own_baseline(gate_run, tmp_path)
    assert _check(gate_run, base, tmp_path).exit_code == 0
    # NaN (and ±Infinity) in a baseline: an error, never "+nan ok"
    text = json.dumps(base).replace(str(base["cells"][0]["metrics"]["accuracy"]), "NaN", 1)
    r = _check(gate_run, text, tmp_path)
    assert r.exit_code == 2 and "cells[0].metrics.accuracy: not a finite number" in r.output
    r = _check(gate_run, {**base, "format": 99}, tmp_path)
    assert r.exit_code == 2 and "unknown baseline format 99" in r.output
    r = _check(gate_run, {**base, "cells": base["cells"] + base["cells"][:1]}, tmp_path)
    assert r.exit_code == 2 and "cells[2] repeats the axes of cells[0]" in r.output
    r = _check(gate_run, {**base, "grids": ["another"]}, tmp_path)
    assert r.exit_code == 2 and "the baseline is of grid 'another'" in r.output
    # a changed config hash and a missing cell: their own rows, not "regressed"
    cells = json.loads(json.dumps(base["cells"]))
    cells[0]["cell_id"] = "0" * 16
    extra = json.loads(json.dumps(cells[1]))
    extra["axes"]["seed"] = 99
    r = _check(gate_run, {**base, "cells": cells + [extra]}, tmp_path)
    assert r.exit_code == 1, r.output
    assert "0 regressed" in r.output
    assert "1 configuration changed" in r.output and "1 missing in this run" in r.output


def test_f_non_finite_results_fail_the_gate(gate_run, tmp_path):
    import shutil
    import sqlite3

    base = _own_baseline(gate_run, tmp_path)
    run = tmp_path / "copy"
    shutil.copytree(gate_run, run)
    with sqlite3.connect(run / "results.db") as conn:
        conn.execute("UPDATE cells SET accuracy = 'NaN'")
    r = _check(run, base, tmp_path)
    assert r.exit_code == 1 and "missing or non-finite value" in r.output


# ------------------------------------------------ D. grid files

ALIAS_BOMB = """name: bomb
description:
  - &a [x, x, x, x, x, x, x, x, x, x]
  - &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
  - &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
  - &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
  - &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
  - &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
  - &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
  - &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
  - &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
grid: {seed: [0]}
"""


def _dry_run(path):
    from typer.testing import CliRunner

    from byzbench.cli import app

    return CliRunner().invoke(app, ["run", str(path), "--dry-run"])


def test_d_grid_files_that_cannot_run_fail_before_running(tmp_path):
    import time

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)                       # 10^9 strings once expanded
    start = time.perf_counter()
    r = _dry_run(bomb)
    assert time.perf_counter() - start < 10
    assert r.exit_code == 2
    assert f"{bomb}: the YAML expands to more than 100,000 nodes" in r.output
    huge = write_grid(tmp_path / "huge.yaml", {"name": "huge",
                                               "base": {"clients": 1_000_000_000}})
    r = _dry_run(huge)
    assert r.exit_code == 2 and "base.clients" in r.output and "1000000" in r.output
    many = write_grid(tmp_path / "many.yaml", {"name": "many", "base": {"clients": 5000}})
    r = _dry_run(many)
    assert r.exit_code == 2 and "base.clients: 5,000 clients" in r.output
    assert "clients ≤ 1,347" in r.output           # digits: 1,797 − 450 test images
    axis = write_grid(tmp_path / "axis.yaml", {
        "name": "axis", "base": {"dataset": {"name": "synthetic", "train_samples": 100}},
        "grid": {"clients": [10, 200]}})
    r = _dry_run(axis)
    assert r.exit_code == 2 and "grid.clients: 200 clients" in r.output
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: empty\nbase: {clients: 6}\ngrid: {}\n")
    r = _dry_run(empty)
    assert r.exit_code == 0 and "warning:" in r.output and "grid: no axes" in r.output


# ------------------------------------------------ E. the results directory


def _cli(*args):
    from typer.testing import CliRunner

    from byzbench.cli import app

    return CliRunner().invoke(app, list(map(str, args)))


def test_e_results_directory_faults_are_one_line_exit_2(tmp_path, monkeypatch):
    import os
    import sqlite3
    import subprocess
    import time

    grid = write_grid(tmp_path / "g.yaml", {"name": "e", "base": TINY_BASE,
                                            "grid": {"seed": [0]}})
    # a second run on a directory in use: refused, naming the holder
    busy = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom byzbench.store import DirectoryLock\n"
         f"with DirectoryLock({str(busy)!r}):\n    print('held', flush=True)\n"
         "    time.sleep(60)"], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        assert holder.stdout.readline().strip() == "held"
        for _ in range(50):
            if (busy / ".byzbench.lock.owner").exists():
                break
            time.sleep(0.1)
        r = _cli("run", grid, "-o", busy, "-w", 1, "-q")
        assert r.exit_code == 2, r.output
        assert f"{busy} is in use by another byzbench run (pid {holder.pid} on " in r.output
        assert not (busy / "results.db").exists()
    finally:
        holder.kill()
        holder.wait()
    # garbage and wrong-schema databases: refused, left as they were
    for name, make_db in (("garbage", lambda p: p.write_bytes(b"\x07" * 5000)),
                          ("wrong", lambda p: sqlite3.connect(p).execute(
                              "CREATE TABLE cells (x INTEGER)").connection.commit())):
        d = tmp_path / name
        d.mkdir()
        make_db(d / "results.db")
        before = (d / "results.db").read_bytes()
        r = _cli("run", grid, "-o", d, "-w", 1, "-q")
        assert r.exit_code == 2 and "not a byzbench results database" in r.output, r.output
        assert "Traceback" not in r.output and (d / "results.db").read_bytes() == before
        r = _cli("check", d, "-b", tmp_path / "none.json")
        assert r.exit_code == 2
    # baseline -o where it cannot be written: nothing left behind
    ok = tmp_path / "ok"
    assert _cli("run", grid, "-o", ok, "-w", 1, "-q").exit_code == 0
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = _cli("baseline", ok, "-o", blocker / "base.json")
    assert r.exit_code == 2 and f"cannot write baseline {blocker / 'base.json'}" in r.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))  == []
    # a read-only results directory (as root, chmod does not stop writes: use one of the
    # system's read-only directories when there is one)
    readonly = next((Path(p) for p in ("/sys/kernel", "/proc/self") if Path(p).is_dir()
                     and not _writable(Path(p))), None)
    if readonly is not None:
        r = _cli("run", grid, "-o", readonly, "-w", 1, "-q")
        assert r.exit_code == 2 and "Traceback" not in r.output
        assert f"cannot write to results directory {readonly}" in r.output
    # a plugin that raises on import
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = write_grid(tmp_path / "p.yaml", {"name": "p", "base": TINY_BASE, "grid": {
        "defense": ["broken_plugin:Defense"]}})
    r = _cli("run", plugin, "-o", tmp_path / "p", "-w", 1, "-q")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "module 'broken_plugin'" in r.output and "RuntimeError: boom at import" in r.output
    assert not (tmp_path / "p").exists()


def _writable(directory: Path) -> bool:
    try:
        (directory / ".byzbench-probe").touch()
    except OSError:
        return False
    (directory / ".byzbench-probe").unlink()
    return True
