"""Timing, peak memory, profiles and machine information shared by the benchmark sections."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

Step = Callable[[], object]
MIB = 2**20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(steps: dict[str, Step], repeats: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of every step, measured round robin: each repetition runs every step once, starting one
    step later than the previous repetition, so that drift (other processes, caches, clocks) hits all steps alike."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for repetition in range(repeats):
        shift = repetition % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()  # untimed, and no collection lands inside a timed step
            gc.disable()
            try:
                synchronize(device)
                start = time.perf_counter()
                steps[name]()
                synchronize(device)
                seconds[name].append(time.perf_counter() - start)
            finally:
                gc.enable()
    return seconds


def flop_count(step: Step) -> int:
    """Floating-point operations of one call of `step` (torch's FlopCounterMode: matmuls and attention). A count,
    not a time: the same whatever else the machine is doing, so a regression in what a step computes shows here
    even when the timings are noisy."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(seconds: dict[str, list[float]], name: str, reference: str) -> float:
    """Median over repetitions of time(name) / time(reference) within the same repetition."""
    return median([mine / theirs for mine, theirs in zip(seconds[name], seconds[reference], strict=True)])


def peak_memory(step: Step, device: torch.device) -> int:
    """Peak bytes of tensor memory live during one call of `step`, above what was live when it started.

    CUDA: the caching allocator's peak counter. CPU: torch has no such counter, so the profiler records every CPU
    tensor allocation and free (profile_memory=True) and the peak of their running sum is taken. Both count tensor
    storage only (not Python objects, not allocator caching), so methods measured the same way compare directly.
    """
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    events = [
        event
        for event in profiler.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    ]
    live = peak = 0
    for event in sorted(events, key=lambda event: event.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def resident_memory(device: torch.device) -> int | None:
    """Bytes of tensor memory allocated right now (CUDA only; CPU has no allocator counter)."""
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def profile_table(step: Step, memory: bool = False, rows: int = 15) -> str:
    """torch.profiler's top operators of one call of `step`, by self CPU time or by the CPU memory they allocate."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=memory) as profiler:
        step()
    return profiler.key_averages().table(
        sort_by="self_cpu_memory_usage" if memory else "self_cpu_time_total", row_limit=rows
    )


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info(device: torch.device) -> dict[str, str]:
    info = {
        "CPU": _cpu_model(),
        "logical cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "peft": version("peft"),
        "device": str(device),
    }
    if device.type == "cuda":
        info["GPU"] = torch.cuda.get_device_name(device)
    return info


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine in clock ticks, from /proc/stat."""
    stat = Path("/proc/stat")
    if not stat.is_file():
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in stat.read_text().split()[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


@dataclass
class CpuShare:
    """How much of the machine's CPU time other processes used while the suite ran (Linux only)."""

    _start_jiffies: tuple[int, int] | None = field(default_factory=_cpu_jiffies)
    _start_own: float = field(default_factory=lambda: sum(os.times()[:4]))
    _start_load: float = field(default_factory=lambda: os.getloadavg()[0])

    def summary(self) -> str:
        end = _cpu_jiffies()
        load = f"1-minute load average {self._start_load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
        if self._start_jiffies is None or end is None:
            return load
        ticks = os.sysconf("SC_CLK_TCK")
        busy = (end[0] - self._start_jiffies[0]) / ticks
        total = (end[1] - self._start_jiffies[1]) / ticks
        own = sum(os.times()[:4]) - self._start_own
        others = max(busy - own, 0.0) / total if total else 0.0
        verdict = "shared: other processes competed for the CPU" if others > 0.05 else "quiet"
        return f"{verdict}; other processes used {others:.0%} of all CPU time during the run; {load}"
