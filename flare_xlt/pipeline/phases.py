"""Where a run's time goes: wall-clock and CPU seconds per phase, written to the run folder as timings.json.

The pipeline's steps are marked with `@phase(name)` (loading, building the adapter, training, validation, the
final evaluation, saving). They cost nothing outside a recording: `@recorded_run` (on finetune and transfer) makes a
new clock the active one for the call, and only then does a marked call add its time; the run writes the clock's
summary with `write_timings` once it has scored. A run made inside another (the ensemble's LoRA run, made first
when missing) records its own timings and counts as the phase `reused run` of the outer one.

A phase that runs inside another (validation inside training) counts for itself and is taken out of the enclosing
one, so the phases add up to the time they cover; what no phase covers is `other`. CPU seconds are the process's
(every thread), so a run that shares the machine still shows what it computed; on a GPU each phase ends with a
synchronisation, so its wall time includes its kernels.
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..io import write_text_atomic

TIMINGS_FILE = "timings.json"
_ACTIVE: list[PhaseClock] = []  # the recording clock, if any (one run records at a time in a process)


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class PhaseClock:
    def __init__(self) -> None:
        self.wall: Counter[str] = Counter()
        self.cpu: Counter[str] = Counter()
        self._open: list[list[float]] = []  # per running phase: [wall, cpu] spent in phases inside it
        self._started = (time.perf_counter(), time.process_time())

    @contextmanager
    def recording(self) -> Iterator[PhaseClock]:
        outer = _ACTIVE[-1] if _ACTIVE else None
        _ACTIVE.append(self)
        try:
            if outer is None:
                self._started = (time.perf_counter(), time.process_time())
                yield self
            else:
                with outer.measure("reused run"):
                    self._started = (time.perf_counter(), time.process_time())
                    yield self
        finally:
            _ACTIVE.remove(self)

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        _synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        self._open.append([0.0, 0.0])
        try:
            yield
        finally:
            _synchronize()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            inner_wall, inner_cpu = self._open.pop()
            self.wall[name] += wall - inner_wall
            self.cpu[name] += cpu - inner_cpu
            if self._open:  # this phase's time is not the enclosing phase's own
                self._open[-1][0] += wall
                self._open[-1][1] += cpu

    def summary(self) -> dict:
        """{"wall_seconds": {phase: s, ..., "other": s}, "cpu_seconds": {...}, "total_wall_seconds": s, ...}, from
        the start of the recording until now."""
        _synchronize()
        total_wall = time.perf_counter() - self._started[0]
        total_cpu = time.process_time() - self._started[1]
        wall = {name: round(seconds, 3) for name, seconds in self.wall.items()}
        cpu = {name: round(seconds, 3) for name, seconds in self.cpu.items()}
        wall["other"] = round(max(total_wall - sum(self.wall.values()), 0.0), 3)
        cpu["other"] = round(max(total_cpu - sum(self.cpu.values()), 0.0), 3)
        return {
            "total_wall_seconds": round(total_wall, 3),
            "total_cpu_seconds": round(total_cpu, 3),
            "wall_seconds": wall,
            "cpu_seconds": cpu,
            "torch_threads": torch.get_num_threads(),
        }


def recorded_run(function: Callable) -> Callable:
    """finetune and transfer: the call records its phases on a clock of its own."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        with PhaseClock().recording():
            return function(*args, **kwargs)

    return run


def write_timings(run_dir: Path) -> None:
    """The recording clock's summary so far, as <run_dir>/timings.json (nothing when no clock records, nor in any
    process but the first under torchrun, which alone writes the run's files)."""
    if _ACTIVE and not (torch.distributed.is_initialized() and torch.distributed.get_rank() != 0):
        write_text_atomic(Path(run_dir) / TIMINGS_FILE, json.dumps(_ACTIVE[-1].summary(), indent=2) + "\n")


def phase(name: str) -> Callable[[Callable], Callable]:
    """Mark a pipeline step: its calls count as phase `name` of the recording clock, if one is recording."""

    def mark(function: Callable) -> Callable:
        @functools.wraps(function)
        def timed(*args, **kwargs):
            if not _ACTIVE:
                return function(*args, **kwargs)
            with _ACTIVE[-1].measure(name):
                return function(*args, **kwargs)

        return timed

    return mark


def read_timings(run_dir: Path) -> dict | None:
    """A finished run's timings.json, or None for a run made before runs recorded them."""
    path = Path(run_dir) / TIMINGS_FILE
    return json.loads(path.read_text()) if path.exists() else None
