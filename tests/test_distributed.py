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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(SCRIPT.parent), "OMP_NUM_THREADS": "1"}
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
        [sys.executable, str(SCRIPT), str(single), "4", tokenizer],
        [*torchrun, str(SCRIPT), str(double), "2", tokenizer],
    ]
    for command in commands:
        finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr[-3000:]
    one, two = load_file(single), load_file(double)
    assert one.keys() == two.keys() and len(one) > 1
    torch.testing.assert_close(two["training_loss"], one["training_loss"], atol=1e-5, rtol=0)
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)
    moved = [name for name in one if "lora_B" in name or "modules_to_save" in name]
    assert moved and all(one[name].abs().sum() > 0 for name in moved)  # the steps really trained the adapter
