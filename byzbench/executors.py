"""What runs a cell, in whichever process runs it, and the start-up of the local executor's
worker processes; kept light to import (heavy imports happen inside the functions).

:func:`execute_cell` is the one body of a cell for every executor: the inline loop and the
worker pool of :mod:`byzbench.runner`, and the Ray tasks of :mod:`byzbench.ray_executor`.

Workers fork from a *forkserver*: a clean process that has imported the engine once (torch,
the attacks and the defenses — about 1.3 s) and never ran torch, so no OpenMP or CUDA state
is inherited; each worker is then a cheap fork of it. What only some cells need
(scikit-learn's clustering, dp-accounting: :func:`lazy_imports`) a worker imports before
the first cell that needs it, outside that cell's time.
:func:`prestart_pool` launches that server at once, so its imports run on another core while
the calling process does its own (the CLI calls it before it even reads the grid); a pool
created later finds the server ready. This module imports nothing heavy itself.
"""

from __future__ import annotations

import functools
import gc
import importlib
import multiprocessing
import multiprocessing.context
import signal
import sys
import time
import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from byzbench.config import Cell, CellConfig, ComponentSpec
    from byzbench.engine.simulation import CellResult

# what each worker needs before its first cell: the engine and every built-in component, and
# numpy.ma, which numpy imports lazily on the first np.unique (~11 ms inside the first cell)
PRELOAD = ["numpy.ma", "byzbench.engine.simulation", "byzbench.data.datasets", "byzbench.data.partition",
           "byzbench.models", "byzbench.attacks", "byzbench.defenses", "byzbench.executors",
           "byzbench._forkserver_ready"]


def pool_context() -> multiprocessing.context.BaseContext:
    """forkserver (with :data:`PRELOAD`) where the platform has it, else spawn."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def prestart_pool() -> bool:
    """Launch the forkserver now, without waiting for its imports; False if there is none."""
    ctx = pool_context()
    if ctx.get_start_method() != "forkserver":
        return False
    from multiprocessing import forkserver

    forkserver.ensure_running()
    return True


PARENT_POLL_SECONDS = 0.5  # how often a worker checks that the run that started it lives


def _exit_with_parent(parent: int) -> None:
    """Daemon thread of a worker: end the worker once the process that runs the grid is gone
    (killed with SIGKILL, it cannot shut its pool down; the workers are children of the
    forkserver, not of it, and would otherwise wait for work forever)."""
    import os
    import threading

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_SECONDS)
            if not _alive(parent):
                os._exit(1)

    threading.Thread(target=watch, name="byzbench-parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs: it exists, is ours, and is not a zombie (a killed run
    whose own parent has not reaped it yet still answers ``kill(pid, 0)``)."""
    import os

    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or the pid now another user's
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:  # no /proc (macOS): kill(pid, 0) is all there is
        return True


def init_worker(threads: int, sys_path: list[str], datasets: list[ComponentSpec],
                parent: int | None = None) -> None:
    """Initializer of a local pool worker: ignore Ctrl-C and SIGTERM (the parent handles
    them and ends its workers), exit when ``parent`` (the pid of the process running the
    grid) is gone, take the parent's ``sys.path`` and ``threads`` torch threads, load
    ``datasets`` before the first cell."""
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    if parent is not None:
        _exit_with_parent(parent)
    sys.path[:] = sys_path
    torch.set_num_threads(threads)
    preload_datasets(datasets)
    gc.freeze()  # what the worker inherited stays out of its collections (no copy-on-write)


def grid_datasets(cells: list[Cell]) -> list[ComponentSpec]:
    """The distinct dataset settings of ``cells``, in first-use order."""
    unique: dict[str, ComponentSpec] = {}
    for cell in cells:
        unique.setdefault(cell.config.dataset.model_dump_json(), cell.config.dataset)
    return list(unique.values())


def preload_datasets(specs: list[ComponentSpec]) -> None:
    """Load ``specs`` into this process's dataset cache before its first cell, so no cell's
    time includes loading data. A dataset that fails to load is left to the cell that
    uses it, which then fails with the error."""
    from byzbench.engine.simulation import build
    from byzbench.registry import DATASETS

    for spec in specs:
        try:
            build(DATASETS, spec).load()
        except Exception:  # noqa: BLE001, S112 - reported by the cell itself
            continue


def lazy_imports(config: CellConfig) -> list[str]:
    """The modules ``config``'s components import on first use (scikit-learn's clustering
    for FLAME and clipped clustering, dp-accounting for DP): its defense's
    ``lazy_imports`` and, with DP, :data:`byzbench.privacy.dp.LAZY_IMPORTS`."""
    from byzbench.privacy.dp import LAZY_IMPORTS

    modules = list(_defense_imports(config.defense.model_dump_json()))
    if config.privacy.dp.mode != "none":
        modules += LAZY_IMPORTS
    return modules


@functools.lru_cache(maxsize=64)
def _defense_imports(spec_json: str) -> tuple[str, ...]:
    """``lazy_imports`` of the defense a spec builds, once per spec and process (a plugin's
    constructor may be costly)."""
    from byzbench.config import ComponentSpec
    from byzbench.engine.simulation import build
    from byzbench.registry import DEFENSES

    return tuple(build(DEFENSES, ComponentSpec.model_validate_json(spec_json)).lazy_imports)


def import_lazy(config: CellConfig) -> None:
    """Import :func:`lazy_imports` of ``config`` now, outside the cell's time (once per
    process: an imported module costs a dictionary lookup). Errors are left to the cell."""
    try:
        for module in lazy_imports(config):
            importlib.import_module(module)
    except Exception:  # noqa: BLE001, S110 - the cell itself reports what is wrong
        pass


def execute_cell(cell: Cell, device: str | None = None
                 ) -> tuple[CellResult, str | None, float]:
    """Run one cell: (result, traceback or None, the time it started, stamped here by the
    process that runs it). Any exception becomes a failed result with its traceback.
    What the cell's components import on first use is imported before its clock starts
    (:func:`import_lazy`), so the first FLAME cell of a worker takes FLAME's time, not
    scikit-learn's import's.

    ``device`` overrides the cell's ``device`` setting (it never changes the cell's numbers).
    """
    import_lazy(cell.config)
    started, start = time.time(), time.perf_counter()
    from byzbench.engine.simulation import CellResult, run_cell

    try:
        import torch

        return run_cell(cell.config, torch.device(device) if device else None), None, started
    except Exception as exc:  # noqa: BLE001 - a failing cell must not stop the grid
        message = f"{type(exc).__name__}: {exc}"
        return (CellResult(status="failed", error=message, wall_s=time.perf_counter() - start),
                traceback.format_exc(), started)


__all__ = ["PRELOAD", "execute_cell", "grid_datasets", "import_lazy", "init_worker",
           "lazy_imports", "pool_context", "preload_datasets", "prestart_pool"]
