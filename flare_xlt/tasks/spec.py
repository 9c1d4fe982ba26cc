"""Task definitions: XNLI, TyDiQA-GoldP, NusaX-senti built in; custom tasks from a small YAML/JSON file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

KINDS = ("classification", "extractive_qa")
METRICS = ("accuracy", "macro_f1", "squad")
SPLIT_ROLES = ("train", "validation", "test")


@dataclass(frozen=True)
class TaskSpec:
    name: str = field(metadata={"help": "Task name, e.g. xnli."})
    kind: str = field(metadata={"help": f"One of {', '.join(KINDS)}."})
    text_fields: tuple[str, ...] = field(metadata={"help": "Text fields of one example; for QA: (question, context)."})
    languages: tuple[str, ...] = field(metadata={"help": "Language codes the task offers, English included."})
    metric: str = field(metadata={"help": f"Headline metric: one of {', '.join(METRICS)}."})
    encoder_template: str = field(metadata={"help": "Single-segment encoder input, e.g. 'Premise: {premise} ...'."})
    decoder_template: str = field(metadata={"help": "Decoder prompt; the answer follows it, e.g. '...\\nLabel: '."})
    input_fusion_encoder_template: str = field(
        metadata={"help": "Encoder input of the input-level fusion baseline; {source_<field>} names the English side."}
    )
    input_fusion_decoder_template: str = field(metadata={"help": "Decoder prompt of the input-level fusion baseline."})
    label_names: tuple[str, ...] = field(default=(), metadata={"help": "Class names, in label-id order."})
    verbalizers: tuple[str, ...] = field(
        default=(), metadata={"help": "Words a decoder generates for each class; default: label_names."}
    )
    splits: dict[str, str] = field(
        default_factory=lambda: {role: role for role in SPLIT_ROLES},
        metadata={"help": "Dataset split used for each role (train/validation/test)."},
    )
    source_language: str = field(default="en", metadata={"help": "The language of the source (English) view."})

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Task {self.name!r}: unknown kind {self.kind!r}; valid choices: {', '.join(KINDS)}.")
        if self.metric not in METRICS:
            raise ValueError(
                f"Task {self.name!r}: unknown metric {self.metric!r}; valid choices: {', '.join(METRICS)}."
            )
        if self.kind == "classification" and len(self.label_names) < 2:
            raise ValueError(f"Task {self.name!r}: a classification task needs at least two label_names.")
        if self.kind == "extractive_qa" and self.text_fields != ("question", "context"):
            raise ValueError(f"Task {self.name!r}: extractive_qa needs text_fields [question, context].")
        allowed_metrics = ("squad",) if self.kind == "extractive_qa" else ("accuracy", "macro_f1")
        if self.metric not in allowed_metrics:
            raise ValueError(
                f"Task {self.name!r}: metric {self.metric!r} does not fit kind {self.kind!r}; valid choices: "
                f"{', '.join(allowed_metrics)}."
            )
        if self.verbalizers and len(self.verbalizers) != len(self.label_names):
            raise ValueError(
                f"Task {self.name!r}: {len(self.verbalizers)} verbalizers for {len(self.label_names)} label_names."
            )
        missing_roles = sorted(set(SPLIT_ROLES) - set(self.splits))
        if missing_roles:
            raise ValueError(f"Task {self.name!r}: splits lacks the roles {missing_roles}.")
        if self.source_language not in self.languages:
            raise ValueError(f"Task {self.name!r}: source_language {self.source_language!r} is not in its languages.")
        for template_name in ("encoder_template", "decoder_template"):
            self._check_template(template_name, getattr(self, template_name), self.text_fields)
        fusion_fields = (*self.text_fields, *(f"source_{name}" for name in self.text_fields))
        for template_name in ("input_fusion_encoder_template", "input_fusion_decoder_template"):
            self._check_template(template_name, getattr(self, template_name), fusion_fields)

    def _check_template(self, template_name: str, template: str, allowed: tuple[str, ...]) -> None:
        try:
            template.format(**dict.fromkeys(allowed, ""))
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"Task {self.name!r}: {template_name} {template!r} uses a field that is not one of {list(allowed)} "
                f"({error!r})."
            ) from error

    @property
    def answer_words(self) -> tuple[str, ...]:
        return self.verbalizers or self.label_names

    def check_language(self, language: str) -> None:
        if language not in self.languages:
            raise ValueError(
                f"Task {self.name!r} has no language {language!r}; valid choices: {', '.join(self.languages)}."
            )


XNLI = TaskSpec(
    name="xnli",
    kind="classification",
    text_fields=("premise", "hypothesis"),
    languages=("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"),
    metric="accuracy",
    label_names=("entailment", "neutral", "contradiction"),
    encoder_template="Premise: {premise} Hypothesis: {hypothesis}",
    decoder_template="Premise: {premise}\nHypothesis: {hypothesis}\nLabel: ",
    input_fusion_encoder_template=(
        "Premise: {source_premise} Hypothesis: {source_hypothesis} Premise: {premise} Hypothesis: {hypothesis}"
    ),
    input_fusion_decoder_template=(
        "Premise: {source_premise}\nHypothesis: {source_hypothesis} "
        "Premise: {premise}\nHypothesis: {hypothesis}\nLabel: "
    ),
)

TYDIQA = TaskSpec(
    name="tydiqa",
    kind="extractive_qa",
    text_fields=("question", "context"),
    languages=("ar", "bn", "en", "fi", "id", "ko", "ru", "sw", "te"),
    metric="squad",
    encoder_template="{question} {context}",
    decoder_template="Context: {context}\nQuestion: {question}\nAnswer: ",
    # The English question and context go in front of the target question; the target context stays the second
    # segment so that its answer offsets and windows are unchanged.
    input_fusion_encoder_template="{source_question} {source_context} {question}",
    input_fusion_decoder_template=(
        "Context: {source_context}\nQuestion: {source_question}\n\nContext: {context}\nQuestion: {question}\nAnswer: "
    ),
    # TyDiQA-GoldP has no test split: its validation split is the test set, as in the paper.
    splits={"train": "train", "validation": "validation", "test": "validation"},
)

NUSAX = TaskSpec(
    name="nusax",
    kind="classification",
    text_fields=("text",),
    languages=("ace", "ban", "bbc", "bjn", "bug", "en", "id", "jav", "mad", "min", "nij", "sun"),
    metric="macro_f1",
    label_names=("negative", "neutral", "positive"),
    encoder_template="{text}",
    decoder_template="{text}\nSentiment: ",
    input_fusion_encoder_template="{source_text}{text}",
    input_fusion_decoder_template="{source_text}\n{text}\nSentiment: ",
)

TASKS = {task.name: task for task in (XNLI, TYDIQA, NUSAX)}


def load_task_spec(path: str | Path) -> TaskSpec:
    """A custom task from YAML or JSON; the input-fusion templates default to the two templates joined."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: {error}"
        ) from error
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a task spec is a mapping of fields, got {type(values).__name__}.")
    known = {spec_field.name for spec_field in fields(TaskSpec)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown task fields {unknown}; valid fields: {sorted(known)}.")
    missing = sorted({"name", "kind", "text_fields", "languages", "metric"} - set(values))
    if missing:
        raise ValueError(f"{path}: missing required task fields {missing}.")
    text_fields = tuple(values["text_fields"])
    encoder = values.get("encoder_template", " ".join(f"{{{name}}}" for name in text_fields))
    decoder = values.get("decoder_template", encoder + "\nAnswer: ")
    values.setdefault("encoder_template", encoder)
    values.setdefault("decoder_template", decoder)
    if values.get("kind") == "extractive_qa":
        # Encoder QA puts this in the first segment, before the target context: it must not repeat {context}.
        values.setdefault("input_fusion_encoder_template", "{source_question} {source_context} {question}")
    values.setdefault("input_fusion_encoder_template", _as_source(encoder, text_fields) + " " + encoder)
    values.setdefault("input_fusion_decoder_template", _as_source(encoder, text_fields) + "\n" + decoder)
    for name in ("text_fields", "languages", "label_names", "verbalizers"):
        if name in values:
            values[name] = tuple(values[name])
    return TaskSpec(**values)


def _as_source(template: str, text_fields: tuple[str, ...]) -> str:
    for name in text_fields:
        template = template.replace(f"{{{name}}}", f"{{source_{name}}}")
    return template


def get_task(name_or_path: str | Path) -> TaskSpec:
    """A built-in task by name, or a custom task from a .yaml/.yml/.json spec file."""
    if str(name_or_path) in TASKS:
        return TASKS[str(name_or_path)]
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        return load_task_spec(path)
    raise ValueError(
        f"Unknown task {str(name_or_path)!r}; valid choices: {', '.join(TASKS)} or the path of a task spec file."
    )
