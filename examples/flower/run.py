"""Run the example with Flower's simulation engine:

    python examples/flower/run.py [--clients 5] [--rounds 5] [--defense ecdsa+multikrum]

Provisioning: every client gets a key pair under a key directory (here a temporary one;
in a deployment each client generates its own and hands only ``client-<i>.pub`` to the
server operator); the ServerApp enrolls the connected nodes against those public keys.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
sys.path.insert(0, ROOT)
# the simulation's ClientApp actors import examples.flower.* from the repository root
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)

from flwr.simulation import run_simulation  # noqa: E402

from byzbench.engine.simulation import build  # noqa: E402
from byzbench.flower import generate_keys, validate_spec  # noqa: E402
from byzbench.registry import DEFENSES  # noqa: E402
from examples.flower.client_app import make_client_app  # noqa: E402
from examples.flower.server_app import make_server_app  # noqa: E402


def simulate(defense="ecdsa+multikrum", clients=5, rounds=5, malicious=(0,), out=None,
             key_dir=None):
    spec = validate_spec(defense)
    signs = build(DEFENSES, spec).signature_scheme
    tmp = None
    if signs is not None and key_dir is None:
        tmp = tempfile.TemporaryDirectory()
        key_dir = tmp.name
    if signs is not None:
        generate_keys(key_dir, [f"client-{i}" for i in range(clients)], signs)
    else:
        key_dir = None
    try:
        run_simulation(
            server_app=make_server_app(defense, rounds, key_dir, out=out),
            client_app=make_client_app(key_dir, tuple(malicious)),
            num_supernodes=clients,
            backend_config={"client_resources": {"num_cpus": 1},
                            "init_args": {"num_cpus": 2, "include_dashboard": False}})
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--defense", default="ecdsa+multikrum")
    p.add_argument("--malicious", type=int, nargs="*", default=[0])
    a = p.parse_args()
    simulate(a.defense, a.clients, a.rounds, a.malicious)
