"""Interruption: `translate` and `transfer` killed with SIGKILL in real subprocesses, then run again, end exactly where
an uninterrupted run ends; stage 1 interrupted after a checkpoint resumes its validation history too."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import NUSAX_DATA
from safetensors.torch import load_file

from flare_xlt import cli
from flare_xlt.pipeline import TrainConfig, finetune, transfer
from flare_xlt.pipeline.checkpoints import ResumableTrainer, latest_checkpoint
from flare_xlt.tasks import XNLI, load_record_file

ENVIRONMENT = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
CLI = [sys.executable, "-m", "flare_xlt.cli"]
QUICK = TrainConfig(batch_size=2, max_steps=2, learning_rate=1e-3, max_length=48, seed=3)


def kill_when(command: list[str], ready: Callable[[], bool], timeout: float = 180, interval: float = 0.02) -> None:
    """Start `command` and SIGKILL it as soon as `ready()` holds, which must happen before it finishes; `ready()` is
    asked every `interval` seconds."""
    process = subprocess.Popen(command, env=ENVIRONMENT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, "the command ended before it could be killed part-way"
            assert time.monotonic() < deadline, "the command never reached the point to kill it at"
            time.sleep(interval)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def kill_at_cached_rows(command: list[str], cache: Path, rows: int) -> int:
    """Start a `translate` command, SIGKILL it once its translation cache holds `rows` translations, and return how
    many it holds then. Every look at the cache is made under the cache's write lock, which is held through the kill
    and for most of the time between looks; the command's stores wait on it (the cache's busy timeout). So the command
    stores only in short gaps and cannot race from below `rows` to the last text between a look and the kill, however
    the two processes are scheduled."""
    database: sqlite3.Connection | None = None
    stored = 0

    def ready() -> bool:
        nonlocal database, stored
        if database is None:
            if not cache.exists():
                return False
            database = sqlite3.connect(cache, timeout=60, isolation_level=None)
        database.execute("BEGIN IMMEDIATE")  # the write lock: the command's next store waits
        try:
            stored = database.execute("SELECT count(*) FROM translations").fetchone()[0]
        except sqlite3.OperationalError:  # the table is still being created
            stored = 0
        if stored >= rows:
            return True  # the lock is kept through the kill
        time.sleep(0.005)  # holding the lock
        database.execute("ROLLBACK")
        return False

    try:
        kill_when(command, ready, interval=0.005)  # the interval: the gap in which the command may store
    finally:
        if database is not None:
            database.close()
    return stored


def run_again(command: list[str], capsys) -> str:
    """`command` (a flare-xlt command line) run again after the killed one, in this process, and what it printed:
    the kill needs a process of its own, the run after it does not (and is spared a Python start with torch)."""
    assert command[: len(CLI)] == CLI, command
    capsys.readouterr()
    cli.main(command[len(CLI) :])
    return capsys.readouterr().out


def cached_rows(cache: Path) -> int:
    if not cache.exists():
        return 0
    database = sqlite3.connect(cache)
    try:
        return database.execute("SELECT count(*) FROM translations").fetchone()[0]
    except sqlite3.OperationalError:  # the table is still being created
        return 0
    finally:
        database.close()


@pytest.mark.slow
def test_killed_translation_resumes_without_loss_or_duplicates(workspace, tmp_path, capsys):
    rows = [
        {
            "id": f"r{i}",
            "premise": f"The cat number {i} sleeps on mat {i % 7}.",
            "hypothesis": "An animal rests.",
            "label": i % 3,
        }
        for i in range(60)
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    distinct = len({row[field] for row in rows for field in ("premise", "hypothesis")})

    def command(output: Path, cache: Path) -> list[str]:
        options = {"task": "xnli", "src": "en", "tgt": "es", "input": tmp_path / "train.jsonl", "output": output}
        # Small batches: a generate call per batch makes many commits to kill between.
        options |= {"model": workspace / "nllb", "num_beams": 1, "max_new_tokens": 12, "tokens_per_batch": 96}
        options |= {"cache": cache, "device": "cpu"}
        return [*CLI, "translate", *(item for key, value in options.items() for item in (f"--{key}", str(value)))]

    output, cache = tmp_path / "killed" / "train_en-es.jsonl", tmp_path / "killed" / "cache.sqlite"
    stored = kill_at_cached_rows(command(output, cache), cache, 10)
    assert 10 <= stored < distinct and not output.exists()  # killed part-way, no partial output file

    printed = run_again(command(output, cache), capsys)
    summary = json.loads(printed[printed.index("{") :])
    assert summary["translation"].startswith(f"{2 * len(rows)} texts: {distinct} distinct")
    from_cache = int(summary["translation"].split(" from the cache")[0].rsplit(" ", 1)[1])
    assert stored <= from_cache < distinct  # what the killed run stored was reused, the rest translated now
    with sqlite3.connect(cache) as database:
        counts = database.execute("SELECT count(*), count(DISTINCT source) FROM translations").fetchone()
    database.close()
    assert counts == (distinct, distinct)  # nothing missing, nothing twice

    # The uninterrupted run translates in one batch; a translation does not depend on its batch
    # (test_mt.py::test_dedup_cache_and_batching), so the two files must be equal.
    reference = tmp_path / "uninterrupted" / "train_en-es.jsonl"
    cli.translate(
        tgt="es",
        task="xnli",
        input=tmp_path / "train.jsonl",
        output=reference,
        model=str(workspace / "nllb"),
        num_beams=1,
        max_new_tokens=12,
        device="cpu",
    )
    assert output.read_bytes() == reference.read_bytes()
    assert [record["id"] for record in load_record_file(XNLI, output)] == [row["id"] for row in rows]


KILLED_TRAIN = TrainConfig(batch_size=1, max_steps=6, learning_rate=1e-3, max_length=48, seed=3, save_steps=2)
TRAIN_OPTIONS = ("batch_size", "max_steps", "learning_rate", "max_length", "seed", "save_steps")


@pytest.fixture(scope="module")
def stage1(workspace, tmp_path_factory):
    return finetune(
        str(workspace / "encoder"), "nusax", output=tmp_path_factory.mktemp("stage1"), data=NUSAX_DATA, train=QUICK
    )


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """The same metrics and predictions, and bit for bit the same adapter."""
    for name in ("metrics.json", "predictions.jsonl", "config.json"):
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name
    weights, expected = (load_file(folder / "adapter" / "adapter_model.safetensors") for folder in (run_dir, reference))
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[name], expected[name]) for name in expected)
    assert {path.name for path in run_dir.iterdir()} == {path.name for path in reference.iterdir()}  # no checkpoints


@pytest.mark.slow
def test_killed_transfer_resumes_to_the_uninterrupted_result(workspace, stage1, tmp_path, capsys):
    common = dict(translations=workspace / "translations", data=NUSAX_DATA, train=KILLED_TRAIN)
    reference = transfer(str(workspace / "encoder"), "nusax", "id", "flare", stage1, output=tmp_path / "ref", **common)
    options = {"model": workspace / "encoder", "task": "nusax", "language": "id", "method": "flare"}
    options |= {"stage1": stage1, "translations": workspace / "translations", "data": NUSAX_DATA}
    options |= {"output": tmp_path / "runs"}
    options |= {f"train.{name}": getattr(KILLED_TRAIN, name) for name in TRAIN_OPTIONS}
    command = [*CLI, "transfer", *(item for key, value in options.items() for item in (f"--{key}", str(value)))]
    run_dir = tmp_path / "runs" / reference.name

    kill_when(command, lambda: latest_checkpoint(run_dir / "checkpoints") is not None)
    kept = latest_checkpoint(run_dir / "checkpoints")
    assert 2 <= int(kept.name.split("-")[1]) < KILLED_TRAIN.max_steps
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "adapter").exists()
    assert json.loads((run_dir / "config.json").read_text()) == json.loads((reference / "config.json").read_text())

    printed = run_again([*command, "--resume", "true"], capsys)
    resumed_from = int(printed.split("resuming from checkpoint-")[1].split()[0])
    assert resumed_from >= int(kept.name.split("-")[1])  # the newest checkpoint when the process died
    assert_same_run(run_dir, reference)


class Interrupted(Exception):
    """Stands in for a process killed right after writing a checkpoint."""


SELECTING = TrainConfig(
    batch_size=1, epochs=2, learning_rate=1e-2, max_length=48, seed=5, save_steps=2, select_best_on_validation=True
)


@pytest.fixture(scope="module")
def selection_reference(workspace, tmp_path_factory):
    return finetune(
        str(workspace / "encoder"),
        "nusax",
        output=tmp_path_factory.mktemp("uninterrupted"),
        data=NUSAX_DATA,
        train=SELECTING,
    )


@pytest.mark.parametrize("resume", [True, False], ids=["resume", "start-over"])
def test_interrupted_stage1_resumes_with_its_validation_history(
    workspace, selection_reference, tmp_path, monkeypatch, capsys, resume
):
    save_checkpoint = ResumableTrainer._save_checkpoint

    def save_then_die(trainer, model, trial):
        save_checkpoint(trainer, model, trial)
        if trainer.state.global_step == 4:  # mid-epoch 2: one validation score is in the checkpoint
            raise Interrupted

    monkeypatch.setattr(ResumableTrainer, "_save_checkpoint", save_then_die)
    with pytest.raises(Interrupted):
        finetune(str(workspace / "encoder"), "nusax", output=tmp_path, data=NUSAX_DATA, train=SELECTING)
    monkeypatch.undo()
    run_dir = tmp_path / selection_reference.name
    assert json.loads((run_dir / "checkpoints" / "checkpoint-4" / "validation_history.json").read_text()) == [
        json.loads((selection_reference / "metrics.json").read_text())["validation_history"][0]
    ]
    capsys.readouterr()
    finetune(str(workspace / "encoder"), "nusax", output=tmp_path, data=NUSAX_DATA, train=SELECTING, resume=resume)
    assert ("resuming from checkpoint-4" in capsys.readouterr().out) == resume
    assert_same_run(run_dir, selection_reference)


def test_only_complete_checkpoints_are_resumed_from(tmp_path):
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / ".checkpoint-6.staging").mkdir()  # a write killed part-way
    (tmp_path / ".checkpoint-2.previous").mkdir()  # a replaced checkpoint not deleted yet
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert latest_checkpoint(tmp_path / "absent") is None
