"""Two CPU processes (gloo) under torchrun reach the same adapter as one process with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from conftest import train_tokenizer
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("distributed_train.py")
FSDP2_SCRIPT = Path(__file__).with_name("fsdp2_train.py")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_one_and_two(tmp_path, script: Path, one_process_args: list[str], two_process_args: list[str]):
    """The script's saved weights from one process and from two gloo processes under torchrun."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(script.parent), "OMP_NUM_THREADS": "1"}
    single, double = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    train_tokenizer("encoder").save_pretrained(tmp_path / "tokenizer")
    tokenizer = str(tmp_path / "tokenizer")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    commands = [
        [sys.executable, str(script), str(single), *one_process_args, tokenizer],
        [*torchrun, str(script), str(double), *two_process_args, tokenizer],
    ]
    for command in commands:
        finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr[-3000:]
    return load_file(single), load_file(double)


def assert_same_training(one: dict, two: dict) -> None:
    assert one.keys() == two.keys() and len(one) > 1
    torch.testing.assert_close(two["training_loss"], one["training_loss"], atol=1e-5, rtol=0)
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)
    moved = [name for name in one if "lora_B" in name or "modules_to_save" in name]
    assert moved and all(one[name].abs().sum() > 0 for name in moved)  # the steps really trained the adapter


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    assert_same_training(*run_one_and_two(tmp_path, SCRIPT, ["4"], ["2"]))


def test_fsdp2_two_processes_match_one(tmp_path):
    """FSDP2 (fully_shard) shards the layers over two processes; fused training (its source pass included) gives
    the loss and adapter of one process on the whole batch."""
    assert_same_training(*run_one_and_two(tmp_path, FSDP2_SCRIPT, [], []))
