"""Run the cells of a grid as Ray tasks (``byzbench run GRID --executor ray``).

Each cell is one Ray task declaring ``cpus_per_cell`` CPUs and ``gpus_per_cell`` GPUs
(fractions allowed); torch inside a task uses as many threads as its whole CPUs (at least
one). The driver — this process — takes results as tasks finish (``ray.wait`` with
``num_returns=1``) and hands each to the runner's ``finish`` callback, which writes it to the
results database: resume, failure isolation, progress and the summary are the local
executor's. At most about twice the cluster's capacity is in flight, so Ctrl-C cancels
what is queued and keeps every finished cell.

Without an address a local Ray is started for the run (and stopped after it); ``auto`` or
``ray://host:10001`` use an existing cluster, on whose nodes byzbench (and any plugin
package) must be importable. Ray is the optional extra ``byzbench[ray]``, imported only here.

Results do not depend on the executor: every random draw of a cell comes from generators
seeded by (cell seed, purpose) on the host (:mod:`byzbench.seeding`).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from byzbench.config import Cell, ConfigError
from byzbench.engine.simulation import CellResult
from byzbench.executors import execute_cell

INSTALL_HINT = "pip install 'byzbench[ray]'"

EmitCallback = Callable[[str, Cell, "CellResult | None"], None]
FinishCallback = Callable[[Cell, CellResult, "str | None", float], None]


class RayExecutorError(RuntimeError):
    """Ray cannot be used for this run (not installed, no cluster at the address, …)."""


class RayUnavailableError(RayExecutorError):
    """Ray is not installed."""


@dataclass(frozen=True)
class RayOptions:
    """How cells map onto Ray: cluster address and resources per cell.

    ``address``: None starts a local Ray; ``auto`` or ``ray://host:port`` joins a cluster.
    ``num_cpus``: CPUs of a local Ray (default: this machine's count). ``max_in_flight``:
    tasks submitted at once (default: twice what the cluster can run at a time).
    """

    address: str | None = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 0.0
    num_cpus: int | None = None
    max_in_flight: int | None = None

    def __post_init__(self) -> None:
        if not self.cpus_per_cell > 0:
            raise ConfigError(f"--cpus-per-cell must be > 0 (got {self.cpus_per_cell})")
        if self.gpus_per_cell < 0:
            raise ConfigError(f"--gpus-per-cell must be ≥ 0 (got {self.gpus_per_cell})")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"num_cpus must be ≥ 1 (got {self.num_cpus})")

    @property
    def threads(self) -> int:
        """torch threads inside one task: its whole CPUs, at least 1."""
        return max(1, int(math.floor(self.cpus_per_cell + 1e-9)))


def import_ray() -> Any:
    """The ``ray`` module, or :class:`RayUnavailableError` with the install command."""
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(
            f"the ray executor needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def check_cells(cells: list[Cell], options: RayOptions) -> None:
    """Refuse, before anything runs, cells that ask for CUDA while tasks reserve no GPU."""
    if options.gpus_per_cell > 0:
        return
    cuda = [c for c in cells if c.config.device == "cuda"]
    if cuda:
        raise ConfigError(f"{len(cuda)} cell(s) set device: cuda, but Ray tasks reserve no GPU;"
                          " pass --gpus-per-cell (e.g. 1, or 0.25 to share a GPU by four)")


def _task_device(cell: Cell, options: RayOptions) -> str | None:
    # a task without a GPU reservation must not pick up a GPU Ray did not give it
    if options.gpus_per_cell == 0 and cell.config.device == "auto":
        return "cpu"
    return None


def ray_task(cell: Cell, threads: int, sys_path: list[str], device: str | None
             ) -> tuple[CellResult, str | None, float]:
    """Body of one Ray task: (result, traceback or None, start time) of ``cell``."""
    import torch

    for entry in reversed(sys_path):  # the driver's paths, so package.module:Class plugins load
        if entry not in sys.path and os.path.isdir(entry):
            sys.path.insert(0, entry)
    torch.set_num_threads(threads)
    return execute_cell(cell, device=device)


def _driver_sys_path() -> list[str]:
    return [os.path.abspath(p) if p else os.getcwd() for p in sys.path]


def _init(ray: Any, options: RayOptions) -> bool:
    """Connect to (or start) Ray; True if this call started it (and must stop it)."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False,
             "configure_logging": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if options.address is None:
                ray.init(num_cpus=options.num_cpus or os.cpu_count() or 1,
                         include_dashboard=False, **quiet)
            elif options.address.startswith("ray://"):
                ray.init(address=options.address)  # Ray Client: other kwargs go to the server
            else:
                ray.init(address=options.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = options.address or "a local Ray"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = (" (start one with `ray start --head`)" if options.address == "auto" else "")
            raise RayExecutorError(f"cannot start or reach Ray at {where}: {first}{hint}"
                                   ) from None
    return True


def _capacity(ray: Any, options: RayOptions) -> int:
    """How many cells the cluster can run at once with the requested resources."""
    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 0))
    if cpus < options.cpus_per_cell:
        raise RayExecutorError(f"the Ray cluster has {cpus:g} CPU(s); a cell asks for "
                               f"{options.cpus_per_cell:g} (--cpus-per-cell)")
    slots = cpus / options.cpus_per_cell
    if options.gpus_per_cell > 0:
        gpus = float(resources.get("GPU", 0))
        if gpus < options.gpus_per_cell:
            raise RayExecutorError(f"the Ray cluster has {gpus:g} GPU(s); a cell asks for "
                                   f"{options.gpus_per_cell:g} (--gpus-per-cell)")
        slots = min(slots, gpus / options.gpus_per_cell)
    return max(1, int(slots + 1e-9))


def run_ray(pending: list[Cell], emit: EmitCallback, finish: FinishCallback,
            options: RayOptions) -> None:
    """Run ``pending`` as Ray tasks; ``finish`` is called in this process as each ends.

    KeyboardInterrupt cancels every task not yet finished and propagates.
    """
    ray = import_ray()
    check_cells(pending, options)
    started_here = _init(ray, options)
    try:
        limit = options.max_in_flight or 2 * _capacity(ray, options)
        task = ray.remote(ray_task).options(num_cpus=options.cpus_per_cell,
                                            num_gpus=options.gpus_per_cell, max_retries=0)
        sys_path = _driver_sys_path()
        queue = list(reversed(pending))
        running: dict[Any, Cell] = {}
        try:
            while queue or running:
                while queue and len(running) < limit:
                    cell = queue.pop()
                    emit("start", cell, None)
                    ref = task.remote(cell, options.threads, sys_path,
                                      _task_device(cell, options))
                    running[ref] = cell
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    cell = running.pop(ref)
                    try:
                        result, tb, t0 = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - a task that died (OOM, node lost)
                        result = CellResult(status="failed",
                                            error=f"{type(exc).__name__}: {_first_line(exc)}")
                        tb, t0 = traceback.format_exc(), time.time()
                    finish(cell, result, tb, t0)
        except KeyboardInterrupt:
            # a Ray this driver started goes down with it (shutdown ends its workers);
            # cancelling there only risks Ray's own race between cancel and completion,
            # which aborts the driver ("Tried to complete task that was not pending")
            for ref in ([] if started_here else running):
                try:
                    # not force=True: a forced cancel racing the task's completion aborts
                    # the driver inside Ray ("Tried to complete task that was not pending")
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001, S110 - best effort; it may have just finished
                    pass
            raise
    finally:
        if started_here:
            ray.shutdown()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


__all__ = ["INSTALL_HINT", "RayExecutorError", "RayOptions", "RayUnavailableError",
           "import_ray", "run_ray"]
