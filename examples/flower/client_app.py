"""The ClientApp: local SGD on the client's digits share, a sign-flipping mod on the
malicious clients, and byzbench's signing mod and enrollment handler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from byzbench.flower import enroll_handler, load_private_key, signing_mod
from examples.flower.task import evaluate, load_partition, make_model, train


def sign_flip_mod(malicious: set[int], factor: float = 1.0):
    """On the malicious clients: reply θ − factor·(θ_local − θ) instead of θ_local (the
    sign-flipping attack of byzbench's ``sign_flip``)."""

    def mod(msg: Message, context: Context, call_next):
        reply = call_next(msg, context)
        if int(context.node_config["partition-id"]) not in malicious or reply.has_error():
            return reply
        sent = msg.content["arrays"]
        got = reply.content["arrays"]
        flipped = {k: sent[k].numpy() - factor * (got[k].numpy() - sent[k].numpy())
                   for k in got.keys()}
        reply.content["arrays"] = ArrayRecord(
            {k: Array(np.ascontiguousarray(v)) for k, v in flipped.items()})
        return reply

    return mod


def make_client_app(key_dir: str | None = None, malicious: tuple[int, ...] = (0,),
                    steps: int = 5, lr: float = 0.1) -> ClientApp:
    """``key_dir``: where each client finds its private key ``client-<partition-id>.key``
    (None: no signing)."""

    def load_key(context: Context):
        name = f"client-{int(context.node_config['partition-id'])}"
        return name, load_private_key(Path(key_dir) / f"{name}.key")  # type: ignore[arg-type]

    mods = [sign_flip_mod(set(malicious))]
    if key_dir is not None:
        mods = [signing_mod(load_key), *mods]   # outermost: signs what is actually sent
    app = ClientApp()

    @app.train(mods=mods)
    def _train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        x, y, _, _ = load_partition(pid, int(context.node_config["num-partitions"]))
        model = make_model()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        server_round = int(msg.content["config"]["server-round"])
        loss = train(model, x, y, steps=steps, lr=lr, seed=1000 * server_round + pid)
        return Message(RecordDict({
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": len(y)})}),
            reply_to=msg)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        _, _, xt, yt = load_partition(int(context.node_config["partition-id"]),
                                      int(context.node_config["num-partitions"]))
        model = make_model()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        loss, acc = evaluate(model, xt, yt)
        return Message(RecordDict({"metrics": MetricRecord(
            {"eval_loss": loss, "eval_acc": acc, "num-examples": len(yt)})}), reply_to=msg)

    if key_dir is not None:
        app.query("byzbench_enroll")(enroll_handler(load_key))
    torch.set_num_threads(1)
    return app
