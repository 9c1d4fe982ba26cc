"""A run's timings: nested phases count for themselves, the phases and `other` add up to the total, and a run made
inside another is the outer run's `reused run`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from flare_xlt.pipeline import phases


@pytest.fixture
def fake_time(monkeypatch):
    """A clock the test moves: wall and CPU seconds advance by what `spend` is given (CPU at half the rate)."""
    now = {"wall": 0.0, "cpu": 0.0}

    def spend(seconds: float) -> None:
        now["wall"] += seconds
        now["cpu"] += seconds / 2

    monkeypatch.setattr(
        phases, "time", SimpleNamespace(perf_counter=lambda: now["wall"], process_time=lambda: now["cpu"])
    )
    return spend


def test_nested_phases_count_for_themselves_and_add_up_to_the_total(fake_time, tmp_path):
    @phases.phase("validate")
    def validate():
        fake_time(3)

    @phases.phase("train")
    def train():
        fake_time(4)
        validate()
        fake_time(2)
        validate()

    @phases.recorded_run
    def run():
        fake_time(1)  # nothing marked: other
        train()
        phases.write_timings(tmp_path)

    run()
    timings = json.loads((tmp_path / phases.TIMINGS_FILE).read_text())
    assert timings["wall_seconds"] == {"train": 6, "validate": 6, "other": 1}
    assert timings["cpu_seconds"] == {"train": 3, "validate": 3, "other": 0.5}
    assert timings["total_wall_seconds"] == 13 and timings["total_cpu_seconds"] == 6.5
    assert phases.read_timings(tmp_path) == timings


def test_marked_steps_record_nothing_outside_a_run(fake_time, tmp_path):
    @phases.phase("train")
    def train():
        fake_time(1)
        return "trained"

    assert train() == "trained"
    phases.write_timings(tmp_path)
    assert phases.read_timings(tmp_path) is None


def test_a_run_made_inside_another_is_its_reused_run(fake_time, tmp_path):
    @phases.phase("train")
    def train():
        fake_time(5)

    @phases.recorded_run
    def inner():
        train()
        phases.write_timings(tmp_path / "inner")

    @phases.recorded_run
    def outer():
        fake_time(1)
        inner()
        train()
        phases.write_timings(tmp_path / "outer")

    (tmp_path / "inner").mkdir()
    (tmp_path / "outer").mkdir()
    outer()
    assert phases.read_timings(tmp_path / "inner")["wall_seconds"] == {"train": 5, "other": 0}
    outer_timings = phases.read_timings(tmp_path / "outer")
    assert outer_timings["wall_seconds"] == {"reused run": 5, "train": 5, "other": 1}
    assert outer_timings["total_wall_seconds"] == 11
