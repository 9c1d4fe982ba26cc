"""The local inputs of configs/smoke.yaml, the first thing to run: the demo's tiny decoder and its tiny world.

    python -m flare_xlt.demo.smoke            # writes smoke/: model, task.yaml, data/, translations/
    flare-xlt run --recipe configs/smoke.yaml  # stage 1, four transfer methods and the report, on a CPU

Nothing is downloaded: the decoder is pretrained from scratch on the synthetic English/Tolan world of `flare-xlt demo`
at its tiny size (a few seconds), the task is the world's sentiment task, and its translations are the world's
simulated MT. A second call reuses the model and rewrites the (deterministic) data.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from pathlib import Path

from .experiment import DEMO_SIZES, DemoConfig, write_task_data
from .pretrain import PretrainingConfig, pretrained_model
from .world import Lexicon

SMOKE_FOLDER = Path("smoke")


def prepare_smoke(folder: Path = SMOKE_FOLDER) -> Path:
    """Write folder/model (a link to the pretrained tiny decoder), folder/task.yaml, folder/data and
    folder/translations, the paths configs/smoke.yaml names; returns `folder`."""
    config = DemoConfig(output=folder, model_type="decoder", sizes=DEMO_SIZES["tiny"])
    lexicon = Lexicon.invent(config.world_seed)
    pretraining = PretrainingConfig(**{**asdict(config.sizes.pretraining), "target_resource": config.target_resource})
    model = pretrained_model(folder / "pretrained", pretraining, "decoder", lexicon, config.world_seed)
    write_task_data(config, lexicon, folder)
    link = folder / "model"
    staging = folder / f".model.staging-{os.getpid()}"
    staging.unlink(missing_ok=True)
    staging.symlink_to(model.relative_to(folder), target_is_directory=True)
    os.replace(staging, link)  # atomic: the link names the old model or the new one
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flare_xlt.demo.smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=SMOKE_FOLDER, help="Folder to write (default: smoke).")
    folder = prepare_smoke(parser.parse_args(argv).output)
    print(f"wrote {folder}: model, task.yaml, data, translations; now run: flare-xlt run --recipe configs/smoke.yaml")


if __name__ == "__main__":
    main()
