"""Scoring a run's model on paired examples: predictions, per-language scores, predictions.jsonl and metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..io import write_text_atomic
from ..metrics import task_scores
from ..tasks import TaskSpec
from .phases import phase
from .predict import predict
from .run_folder import CHECKPOINTS, is_main_process, write_json
from .settings import TrainConfig
from .training import BestOnValidation


def score_pairs(model, loaded, task: TaskSpec, pairs, view, config: TrainConfig, states=None):
    """(predictions, raw outputs, references, per-language scores) of `model` on `pairs`."""
    predictions, raw = predict(
        model,
        loaded.tokenizer,
        task,
        loaded.architecture,
        pairs,
        view,
        config.max_length,
        config.eval_batch_size or config.batch_size,
        source_embeds=states.batch if states is not None else None,
    )
    if task.kind == "classification":
        references = [pair["label"] for pair in pairs]
    else:
        answers_key = "source_answers" if view == "source" else "answers"
        references = [pair[answers_key]["text"] for pair in pairs]
    ids = [pair["id"] for pair in pairs]
    return (
        predictions,
        raw,
        references,
        task_scores(task, ids, [pair["language"] for pair in pairs], predictions, references),
    )


def headline(task: TaskSpec) -> str:
    return "f1" if task.metric == "squad" else task.metric


def validation_callback(model, loaded, task: TaskSpec, pairs, view, config: TrainConfig, states=None):
    @phase("validate")
    def score() -> float:
        return score_pairs(model, loaded, task, pairs, view, config, states)[3]["average"][headline(task)]

    return BestOnValidation(model, score, headline(task))


def evaluation(
    model, loaded, task: TaskSpec, pairs, view, config: TrainConfig, summary: dict, states=None
) -> tuple[list[dict], dict]:
    """(one prediction row per pair, the metrics: `summary` with the headline metric and the scores)."""
    predictions, raw, references, scores = score_pairs(model, loaded, task, pairs, view, config, states)
    ids = [pair["id"] for pair in pairs]
    rows = [
        {"id": i, "prediction": p, "reference": r, "output": o}
        for i, p, r, o in zip(ids, predictions, references, raw, strict=True)
    ]
    return rows, {**summary, "metric": headline(task), "scores": scores}


def write_evaluation(directory: Path, rows: list[dict], metrics: dict, metrics_name: str) -> None:
    """predictions.jsonl, then the metrics file, each atomically; prints the headline score."""
    write_text_atomic(
        directory / "predictions.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    )
    write_json(directory / metrics_name, metrics)
    headline = metrics["scores"]["average"][metrics["metric"]]
    print(f"{metrics['run']}: {metrics['metric']} {headline:.4f} on {metrics['scores']['average']['count']} examples")


@phase("evaluate")
def evaluate_run(
    model, loaded, task: TaskSpec, pairs, view, config: TrainConfig, run_dir: Path, summary: dict, states=None
):
    if not is_main_process():
        return None
    rows, metrics = evaluation(model, loaded, task, pairs, view, config, summary, states)
    metrics["run"] = run_dir.name
    write_evaluation(run_dir, rows, metrics, "metrics.json")  # metrics.json last: it marks the run finished
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)  # the run is complete: nothing is left to resume
    return metrics
