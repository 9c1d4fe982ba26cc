"""Run every benchmark section side by side in one process and write RESULTS.md.

python -m benchmarks.run                      # CPU, full sizes: what `make bench` runs
python -m benchmarks.run --device cuda        # the same on a GPU, plus a Llama-3.1-8B-shaped model in bf16
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .encoder import encoder_section
from .harness import CpuShare, machine_info
from .inference import evaluation_section
from .models import LLAMA_8B, SCALES
from .mt_backends import backends_section
from .overhead import overhead_section
from .report import Section, render
from .training import gpu_section, inference_mode_source_error, training_section
from .translation import translation_section

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "RESULTS.md"


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda adds the 8B-shaped GPU rows.")
    parser.add_argument("--scale", choices=tuple(SCALES), default="full", help="tiny: a smoke run of the code path.")
    parser.add_argument(
        "--repeats", type=int, default=None, help="Timed repetitions per method (default: the scale's)."
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)."
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Where to write the Markdown report.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    arguments = parse_arguments(argv)
    command = " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])])
    threads = torch.get_num_threads()
    torch.set_num_threads(arguments.threads)
    # Nothing that exists now is garbage: keeping it out of the collections before each timed step makes them cheap.
    gc.freeze()
    try:
        report = run_suite(arguments, command)
    finally:
        gc.unfreeze()
        torch.set_num_threads(threads)
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(report)
    print(f"wrote {arguments.output}", file=sys.stderr)
    return arguments.output


def run_suite(arguments: argparse.Namespace, command: str) -> str:
    """Every section, side by side in this process, rendered as the Markdown of RESULTS.md."""
    scale = SCALES[arguments.scale]
    repeats = arguments.repeats or scale.repeats
    gpu_available = arguments.device == "cuda" and torch.cuda.is_available()
    device = torch.device("cuda" if gpu_available else "cpu")
    started, cpu_share = time.perf_counter(), CpuShare()

    sections = []
    for run_section in (training_section, evaluation_section, translation_section, backends_section, encoder_section):
        print(f"running {run_section.__name__} on {device}", file=sys.stderr, flush=True)
        sections.append(run_section(scale, repeats, device))
    sections.append(overhead_section(device))
    if gpu_available:
        print("running the GPU rows", file=sys.stderr, flush=True)
        sections.append(gpu_section(scale, LLAMA_8B, repeats, device))
    else:
        reason = "CUDA is not available on this machine" if arguments.device == "cuda" else "no GPU was lent"
        sections.append(
            Section(
                f"GPU: {LLAMA_8B.name}",
                f"Not run: {reason}. On a machine with a GPU, `python -m benchmarks.run --device cuda` runs every "
                "section there and adds this comparison (LoRA, FLARE with both source sites, input-level fusion and "
                "the authors'-style pass; target tokens/s and torch.cuda peak memory).",
            )
        )
    inference_mode_error = inference_mode_source_error(scale, device)

    info = machine_info(device)
    info["machine load"] = cpu_share.summary()
    header = [
        "# Benchmark results",
        "",
        f"Written by `{command}` on {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} in "
        f"{time.perf_counter() - started:.0f} s ({repeats} timed repetitions after {scale.warmup} warm-up per method, "
        f"scale `{arguments.scale}`). Numbers are medians; timings from a shared machine are noisy.",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in info.items()),
        "",
        "How it measures: all methods of a table are built once on one random-init base model (frozen weights "
        "shared) and run in one process, interleaved round robin with the starting method rotated each repetition. "
        "Peak memory is the peak of live tensor storage during one step above what was live when it began: on CPU "
        "the running sum of the profiler's allocation and free events (torch.profiler, profile_memory=True), on CUDA "
        "torch.cuda.max_memory_allocated. Both count tensors only, the same way for every method. The profiler does "
        "not report frees of tensors allocated before the step, so FLARE, which drops the previous step's source "
        "tensors during its step, reads slightly high on CPU.",
    ]
    closing = [
        "## Why the source pass uses no_grad, not inference_mode",
        "",
        "The target pass computes A·x_s with gradients for A, so autograd saves x_s, the tensor the source pass "
        "recorded. Run under inference_mode, that tensor is an inference tensor, and the first training step on it "
        f'fails (checked in this run): "{inference_mode_error}". The source pass therefore runs under no_grad.',
        "",
    ]
    return render(header, sections, closing)


if __name__ == "__main__":
    main()
