"""A whole real run, FLARE against LoRA, phase by phase: where the time of one transfer run goes.

    python -m benchmarks.real.profile                 # bench-real's full size: bible-canon, Spanish, seed 1
    python -m benchmarks.real.profile --size tiny     # the code path, in a minute

multilingual-e5-small on bible-canon at bench-real's size, Spanish (Apertium), from bench-real's own stage-1 run of
seed 1 (trained first when missing). Each repetition runs every variant once into a fresh folder, in an order that
turns around every repetition (A B C, C B A, ...), so that drift hits them alike; each run's timings.json gives its
phases (flare_xlt/pipeline/phases.py). Printed: the median wall seconds per phase and variant, the whole run's
ratio to LoRA, and CPU seconds beside them. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from flare_xlt.pipeline.phases import read_timings
from flare_xlt.pipeline.recipes import run_recipe
from flare_xlt.pipeline.runs import transfer

from . import assets, bible
from .run import SIZES, Training, canon_grids, workspace

LANGUAGE = "es"
SEED = 1
PHASE_ORDER = ("load", "build", "source pre-pass", "train", "validate", "evaluate", "save", "other")


def variants(adapter, train) -> dict[str, dict]:
    """The transfer runs compared: LoRA and FLARE as bench-real runs them, and FLARE with the deterministic source
    pass, whose states the pre-pass computes once in sorted batches before training."""
    return {
        "LoRA": {"method": "lora", "adapter": adapter, "train": train},
        "FLARE": {"method": "flare", "adapter": adapter, "train": train},
        "FLARE, source pre-pass": {
            "method": "flare",
            "adapter": replace(adapter, source_dropout=False),
            "train": replace(train, source_cache="memory"),
        },
    }


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="full")
    parser.add_argument("--repeats", type=int, default=2, help="Runs per variant (default 2).")
    arguments = parser.parse_args(argv)
    size = SIZES[arguments.size]
    work = workspace(arguments.size, size)
    training = Training(size.train, size.stage1_train, size.adapter, size.pooling)
    (grid,) = canon_grids(size, bible.Bible(assets.bible_db()), work / "canon", training, ["canon"])
    recipe = replace(grid.recipe, languages=[LANGUAGE], seeds=[SEED])
    run_recipe(replace(recipe, methods=[]))  # bench-real's stage 1 of this seed, made when missing
    (stage1,) = [path.parent for path in Path(recipe.output).glob(f"*-finetune-seed{SEED}-*/metrics.json")]
    compared = variants(recipe.adapter, recipe.train)
    folder = work / "profile"
    shutil.rmtree(folder, ignore_errors=True)
    timings: dict[str, list[dict]] = {name: [] for name in compared}
    names = list(compared)
    for repetition in range(arguments.repeats):
        for name in names if repetition % 2 == 0 else names[::-1]:
            settings = compared[name]
            started = time.perf_counter()
            run = transfer(
                recipe.model,
                recipe.task,
                LANGUAGE,
                settings["method"],
                stage1,
                Path(recipe.translations),
                output=folder / f"{repetition}-{names.index(name)}",
                data=recipe.data,
                architecture=recipe.architecture,
                adapter=settings["adapter"],
                train=settings["train"],
            )
            timings[name].append(read_timings(run))
            print(f"{name}, repetition {repetition + 1}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    table = profile_table(timings, torch.get_num_threads())
    print(table)
    return table


def profile_table(timings: dict[str, list[dict]], threads: int) -> str:
    """Median wall seconds per phase for each variant, with its whole run's ratio to the first (LoRA)."""
    names = list(timings)
    phases = [
        phase for phase in PHASE_ORDER if any(phase in t["wall_seconds"] for runs in timings.values() for t in runs)
    ]

    def median(name: str, key: str, phase: str | None = None) -> float:
        return statistics.median(t[key] if phase is None else t[key].get(phase, 0.0) for t in timings[name])

    lines = [
        f"Median of {len(timings[names[0]])} runs each, {threads} torch threads; wall seconds (CPU seconds).",
        "",
        "| phase | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for phase in phases:
        cells = [
            f"{median(name, 'wall_seconds', phase):.1f} ({median(name, 'cpu_seconds', phase):.1f})" for name in names
        ]
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    totals = {name: median(name, "total_wall_seconds") for name in names}
    lines.append("| **whole run** | " + " | ".join(f"**{totals[name]:.1f}**" for name in names) + " |")
    reference = names[0]
    ratios = [
        statistics.median(
            mine["total_wall_seconds"] / theirs["total_wall_seconds"]
            for mine, theirs in zip(timings[name], timings[reference], strict=True)
        )
        for name in names
    ]
    lines.append(f"| × {reference} (whole run) | " + " | ".join(f"{ratio:.2f}×" for ratio in ratios) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
