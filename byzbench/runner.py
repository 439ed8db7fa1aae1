"""Run the cells of a grid on an executor, store each as it finishes, resume later.

Cells already finished (``done`` or ``skipped``) in the results database are not run
again unless ``force``; failed cells are retried. With the local executor each cell runs in
a worker process (``workers > 1``) or in this process, on one torch thread unless
``threads`` says otherwise (:data:`DEFAULT_THREADS`); with the Ray executor
(:mod:`byzbench.ray_executor`) each cell is a Ray task and this process still writes every
result. A cell that raises is stored as ``failed`` with its
error and the grid goes on; Ctrl-C stops the run and keeps every finished cell.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from byzbench.config import Cell, ConfigError, Grid
from byzbench.engine.simulation import CellResult, skip_reason
from byzbench.executors import (
    execute_cell,
    grid_datasets,
    init_worker,
    pool_context,
    preload_datasets,
)
from byzbench.store import DirectoryLock, ResultsStore

if TYPE_CHECKING:
    from byzbench.ray_executor import RayOptions

EventCallback = Callable[[str, Cell, "CellResult | None"], None]
EXECUTORS = ("local", "ray")


@dataclass
class RunSummary:
    """What a run did: counts per outcome, the failures with their errors."""

    results_dir: Path
    total: int
    reused: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    interrupted: bool = False
    terminated: bool = False     # the interruption was SIGTERM
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted


def default_results_dir(grid: Grid) -> Path:
    return Path("results") / grid.name


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


DEFAULT_THREADS = 1
"""torch threads per cell unless asked otherwise: at a grid's shapes a second thread gains
little even on a quiet machine, and on a loaded one it makes a cell many times slower (see
benchmarks/bench_threads.py); parallelism comes from the worker processes instead."""


def strict_check(grid: Grid) -> None:
    """Raise ConfigError listing every cell whose defense cannot run (``--strict``)."""
    problems = []
    for cell in grid.cells:
        reason = skip_reason(cell.config)
        if reason:
            problems.append(f"  {cell.axes}: {reason}")
    if problems:
        raise ConfigError(f"{grid.source}: --strict: {len(problems)} cell(s) cannot run:\n"
                          + "\n".join(problems))


def check_datasets(grid: Grid, cells: list[Cell]) -> None:
    """Raise ConfigError, before any cell runs, if a dataset's files cannot be found."""
    from byzbench.data.datasets import DatasetFormatError, DatasetNotFoundError
    from byzbench.engine.simulation import build
    from byzbench.registry import DATASETS

    for spec in grid_datasets(cells):
        try:
            build(DATASETS, spec).check()
        except (DatasetNotFoundError, DatasetFormatError) as exc:
            raise ConfigError(f"{grid.source}: {exc}") from None


def run_grid(grid: Grid, results_dir: str | Path | None = None, workers: int | None = None,
             force: bool = False, strict: bool = False,
             on_event: EventCallback | None = None, executor: str = "local",
             ray_options: RayOptions | None = None, threads: int | None = None) -> RunSummary:
    """Run every cell of ``grid`` not yet finished in ``results_dir``; see the module doc.

    ``on_event(kind, cell, result)`` is called with kind ``reused`` (already finished),
    ``start`` (handed to the executor: with local workers, at most one cell beyond one per
    worker waits there to start) and ``end``. ``executor``: ``local`` (``workers``
    processes) or ``ray`` (``ray_options``; raises
    :class:`~byzbench.ray_executor.RayUnavailableError` before anything runs when Ray is not
    installed). ``threads``: torch threads per local worker
    (default :data:`DEFAULT_THREADS`, one; the Ray executor sizes its tasks with
    ``ray_options.cpus_per_cell`` instead, one CPU and so one thread by default).
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor '{executor}' (allowed: {', '.join(EXECUTORS)})")
    if executor == "ray":
        from byzbench.ray_executor import RayOptions as _RayOptions
        from byzbench.ray_executor import check_cells, import_ray

        import_ray()
        ray_options = ray_options or _RayOptions()
        check_cells(grid.cells, ray_options)
    if threads is not None and (threads < 1 or executor == "ray"):
        raise ConfigError("threads must be ≥ 1 and is for the local executor (Ray: "
                          f"cpus_per_cell), got {threads}")
    if strict:
        strict_check(grid)
    directory = Path(results_dir) if results_dir is not None else default_results_dir(grid)
    workers = workers or default_workers()
    started = time.perf_counter()
    summary = RunSummary(results_dir=directory, total=len(grid.cells))
    emit = on_event or (lambda kind, cell, result: None)
    with DirectoryLock(directory), ResultsStore.create(directory) as store:
        store.register_grid(grid)
        finished = set() if force else store.finished_ids()
        pending = []
        for cell in grid.cells:
            if cell.id in finished:
                summary.reused += 1
                emit("reused", cell, None)
            else:
                pending.append(cell)
        check_datasets(grid, pending)

        def finish(cell: Cell, result: CellResult, tb: str | None, t0: float) -> None:
            store.record(grid.name, _as_run(cell, result), result, started=t0, traceback=tb)
            if result.status == "done":
                summary.done += 1
            elif result.status == "skipped":
                summary.skipped += 1
            else:
                summary.failed.append((cell, result.error or "unknown error"))
            emit("end", cell, result)

        restore = _sigterm_interrupts()
        try:
            if executor == "ray" and pending:
                from byzbench.ray_executor import run_ray

                assert ray_options is not None
                run_ray(pending, emit, finish, ray_options)
            elif workers == 1 or len(pending) <= 1:
                _run_inline(pending, emit, finish, threads or DEFAULT_THREADS)
            else:
                _run_pool(pending, workers, emit, finish, threads)
        except KeyboardInterrupt as exc:
            summary.interrupted = True
            summary.terminated = isinstance(exc, Terminated)
        finally:
            restore()
    summary.wall_s = time.perf_counter() - started
    return summary


class Terminated(KeyboardInterrupt):
    """SIGTERM during a run: handled as Ctrl-C is (workers ended, finished cells kept)."""


def _sigterm_interrupts() -> Callable[[], None]:
    """Make SIGTERM raise :class:`Terminated` in the main thread for the run; returns the
    function that restores the previous handler (a no-op off the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _as_run(cell: Cell, result: CellResult) -> Cell:
    """``cell`` with the device it actually ran on (``auto`` resolved) in its configuration;
    the device is not part of the cell id, so the id is unchanged."""
    device = result.summary.get("device")
    if not device or device == cell.config.device:
        return cell
    return cell.model_copy(update={"config": cell.config.model_copy(update={"device": device})})


def _run_inline(pending: list[Cell], emit: EventCallback,
                finish: Callable[[Cell, CellResult, str | None, float], None],
                threads: int) -> None:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    preload_datasets(grid_datasets(pending))
    try:
        for cell in pending:
            emit("start", cell, None)
            finish(cell, *execute_cell(cell))
    finally:
        torch.set_num_threads(previous)


WORKER_DIED = ("the worker process running this cell died (killed by a signal or out of "
               "memory), also when it ran alone; the other cells ran on")


def _run_pool(pending: list[Cell], workers: int, emit: EventCallback,
              finish: Callable[[Cell, CellResult, str | None, float], None],
              threads: int | None) -> None:
    """Run ``pending`` on ``workers`` processes.

    A worker that dies breaks the whole pool: every cell in flight fails with
    ``BrokenProcessPool``, whichever worker died. The pool is then rebuilt and those cells
    become *suspects*, each run again alone; a suspect that kills its worker when alone is
    stored as failed (:data:`WORKER_DIED`), the others complete. So a worker's death costs
    only the cell that caused it."""
    workers = min(workers, len(pending))
    # one cell more than workers in flight: a worker that finishes finds the next cell
    # waiting in the pool's queue, instead of waiting for this process to wake and
    # hand one over while the other workers hold the cores; an interrupt or a broken pool
    # then concerns at most that one queued cell more
    in_flight = workers + 1
    initargs = (threads or DEFAULT_THREADS, list(sys.path),
                grid_datasets(pending), os.getpid())

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers, mp_context=pool_context(),
                                   initializer=init_worker, initargs=initargs)

    executor = new_pool()
    queue = list(reversed(pending))
    suspects: list[Cell] = []        # in flight when a pool broke: each reruns alone
    running: dict[Future, tuple[Cell, float]] = {}
    started: set[str] = set()

    def submit(cell: Cell) -> bool:
        if cell.id not in started:
            started.add(cell.id)
            emit("start", cell, None)
        try:
            running[executor.submit(execute_cell, cell)] = (cell, time.time())
        except BrokenProcessPool:    # the pool broke since the last wait
            suspects.append(cell)
            return False
        return True

    try:
        while queue or suspects or running:
            alone = False
            if suspects:
                if not running:
                    alone = submit(suspects.pop())
            else:
                while queue and len(running) < in_flight and submit(queue.pop()):
                    pass
            broken = False
            if running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                results: list[tuple[Cell, CellResult, str | None, float]] = []
                for future in done:
                    cell, t0 = running.pop(future)
                    try:
                        result, tb, t0 = future.result()
                    except BrokenProcessPool:
                        broken = True
                        if alone:           # it died running alone: its own fault
                            results.append((cell, CellResult(status="failed",
                                                             error=WORKER_DIED), None, t0))
                        else:
                            suspects.append(cell)
                        continue
                    except Exception as exc:  # noqa: BLE001 - a cell must not stop the grid
                        result = CellResult(status="failed",
                                            error=f"{type(exc).__name__}: {exc}")
                        tb = traceback.format_exc()
                    results.append((cell, result, tb, t0))
                # the freed workers get their next cells before this process stores the
                # finished ones, so no worker waits on a database write
                while not broken and not suspects and queue and len(running) < in_flight \
                        and submit(queue.pop()):
                    pass
                for item in results:
                    finish(*item)
            else:
                broken = bool(suspects)     # nothing could be submitted: the pool is broken
            if broken:
                for future, (cell, _) in list(running.items()):  # they died with the pool
                    running.pop(future)
                    suspects.append(cell)
                _stop(executor)
                executor = new_pool()
    except BaseException:  # Ctrl-C, SIGTERM, a store that cannot write: end the workers
        _stop(executor)
        raise
    executor.shutdown(wait=True)


def _stop(executor: ProcessPoolExecutor) -> None:
    """End a pool at once: terminate its workers, drop what is queued."""
    processes = getattr(executor, "_processes", None) or {}
    for process in list(processes.values()):
        process.terminate()
    executor.shutdown(wait=False, cancel_futures=True)
