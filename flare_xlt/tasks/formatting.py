"""Turning paired records into model features for encoders and decoders, for every transfer method's input view.

Views:
- "paired": the target input plus source_input_ids / source_attention_mask (FLARE);
- "target": the target input alone (zero-shot, translate-train LoRA);
- "source": the English side as the input (translate-test);
- "input_fusion": English and target text concatenated into one input, with the task's template (the
  input-level fusion baseline).

Decoders get the task's prompt; in training the verbalizer word (or the QA answer) and EOS follow it and only
those tokens carry labels. The decoder source is the English prompt alone. A decoder sequence is the prompt plus
at most `answer_tokens` answer tokens (the most that generation makes), so both prompts, target and English, are
cut to `max_length - answer_tokens` in training and in generation alike: the position that predicts the answer
then reads the same tokens, paired with the same English tokens, when training and when predicting.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..qa import QAFeatures, prepare_qa_features
from .spec import TaskSpec

ARCHITECTURES = ("encoder", "decoder", "seq2seq")
VIEWS = ("paired", "target", "source", "input_fusion")
IGNORE_INDEX = -100
# Answer tokens (EOS included) a decoder generates at most, per task kind: the answer room of every decoder sequence.
ANSWER_TOKENS = {"classification": 8, "extractive_qa": 32}


@dataclass
class EncodingReport:
    """What encoding did to the data: nothing is cut or left out without a count here."""

    examples: int = 0
    features: int = 0
    truncated: int = 0
    answers_outside_windows: int = 0
    answers_truncated: int = 0

    def summary(self) -> str:
        text = f"{self.examples} examples -> {self.features} features; {self.truncated} truncated to max_length"
        if self.answers_truncated:
            text += f"; {self.answers_truncated} answers cut to the answer room"
        if self.answers_outside_windows:
            text += f"; {self.answers_outside_windows} answers lie in no window"
        return text


@dataclass
class TaskEncoder:
    task: TaskSpec
    tokenizer: object
    architecture: str
    view: str = "paired"
    max_length: int = 256
    sentence_pair: bool = False
    stride: int | None = None  # QA window overlap in tokens; None: a quarter of max_length
    for_generation: bool = False
    answer_tokens: int | None = None  # decoder answer room, EOS included; None: ANSWER_TOKENS of the task kind

    def __post_init__(self) -> None:
        if self.stride is None:
            self.stride = self.max_length // 4
        if self.answer_tokens is None:
            self.answer_tokens = ANSWER_TOKENS[self.task.kind]
        if self.architecture == "decoder" and self.max_length - self.answer_tokens < 2:
            raise ValueError(
                f"max_length={self.max_length} leaves no room for a decoder prompt before {self.answer_tokens} answer "
                "tokens; raise max_length."
            )
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"Unknown architecture {self.architecture!r}; valid choices: {', '.join(ARCHITECTURES)}.")
        if self.view not in VIEWS:
            raise ValueError(f"Unknown view {self.view!r}; valid choices: {', '.join(VIEWS)}.")
        if self.sentence_pair and (self.architecture != "encoder" or len(self.task.text_fields) != 2):
            raise ValueError("sentence_pair encoding needs an encoder and a task with exactly two text fields.")
        if self.architecture != "encoder" and not self.for_generation and self.tokenizer.eos_token_id is None:
            raise ValueError("Generative training appends EOS after the answer, but the tokenizer has no eos_token.")

    def encode(self, pairs: list[dict]) -> tuple[list[dict], EncodingReport, QAFeatures | None]:
        """Features (one per example, or per window for encoder QA), the report, and QA windows if any."""
        report = EncodingReport(examples=len(pairs))
        if self.task.kind == "extractive_qa" and self.architecture == "encoder":
            features, windows = self._encode_qa_windows(pairs, report)
        else:
            features, windows = [self._encode_one(pair, report) for pair in pairs], None
        report.features = len(features)
        return features, report, windows

    # ------------------------------------------------------------------ FLARE-MT: the text each feature reads
    def state_texts(self, records: list[dict]) -> list[tuple[str, str]]:
        """(key, text) per feature, in the order of `encode`: the target-language text the model reads in it.

        FLARE-MT's encoder states must cover what the fused model reads: the decoder prompt for decoders, the
        encoder text for encoders, and for encoder QA each window's question and its own slice of the context (keyed
        `<id>#<window>`), not the start of the context for every window. `records` are target-language records or
        pairs.
        """
        if self.task.kind == "extractive_qa" and self.architecture == "encoder":
            questions = [record["question"] for record in records]
            contexts = [record["context"] for record in records]
            windows = prepare_qa_features(self.tokenizer, questions, contexts, None, self.max_length, self.stride)
            texts = []
            for example, window, offsets in zip(
                windows.example_index, windows.window_index, windows.offset_mapping, strict=True
            ):
                spans = [span for span in offsets if span is not None]
                context = contexts[example][spans[0][0] : spans[-1][1]] if spans else ""
                texts.append((f"{records[example]['id']}#{window}", f"{questions[example]} {context}".strip()))
            return texts
        if self.architecture == "encoder":
            fields = [self._fields(record, "target") for record in records]
            if self.sentence_pair:
                return [(str(r["id"]), " ".join(f.values())) for r, f in zip(records, fields, strict=True)]
            return [
                (str(r["id"]), self.task.encoder_template.format(**f)) for r, f in zip(records, fields, strict=True)
            ]
        return [(str(record["id"]), self._prompt(record, "target")) for record in records]

    def state_signature(self) -> dict:
        """What decides `state_texts`; a state store records it, and a run refuses states made for another reader."""
        signature = {"task": self.task.name, "architecture": self.architecture, "vocab_size": len(self.tokenizer)}
        if self.task.kind == "extractive_qa" and self.architecture == "encoder":
            signature.update(max_length=self.max_length, stride=self.stride)
        return signature

    # ------------------------------------------------------------------ text of each side
    def _fields(self, pair: dict, side: str) -> dict:
        prefix = "source_" if side == "source" else ""
        return {name: pair[prefix + name] for name in self.task.text_fields}

    def _input_side(self) -> str:
        return "source" if self.view == "source" else "target"

    def _encoder_text(self, pair: dict, side: str) -> str:
        if self.view == "input_fusion" and side == "target":
            return self.task.input_fusion_encoder_template.format(**pair)
        return self.task.encoder_template.format(**self._fields(pair, side))

    def _prompt(self, pair: dict, side: str) -> str:
        if self.view == "input_fusion" and side == "target":
            return self.task.input_fusion_decoder_template.format(**pair)
        return self.task.decoder_template.format(**self._fields(pair, side))

    # ------------------------------------------------------------------ classification and decoder QA
    def _encode_one(self, pair: dict, report: EncodingReport) -> dict:
        side = self._input_side()
        if self.architecture == "encoder":
            feature = self._encoder_tokens(pair, side, report)
            feature["labels"] = pair["label"]
        else:
            prompt_ids = self._fit_prompt(self.tokenizer(self._prompt(pair, side))["input_ids"], report)
            feature = {"input_ids": prompt_ids, "attention_mask": [1] * len(prompt_ids)}
            if not self.for_generation:
                answer_ids = self._answer_ids(self._answer(pair), report)
                if self.architecture == "seq2seq":  # the encoder reads the prompt, the decoder learns the answer
                    feature["labels"] = answer_ids
                else:
                    input_ids = prompt_ids + answer_ids
                    feature = {
                        "input_ids": input_ids,
                        "attention_mask": [1] * len(input_ids),
                        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
                    }
        if self.view == "paired":
            if self.architecture == "encoder":
                source = self._encoder_tokens(pair, "source", report)
            else:
                source_ids = self._fit_prompt(self.tokenizer(self._prompt(pair, "source"))["input_ids"], report)
                source = {"input_ids": source_ids, "attention_mask": [1] * len(source_ids)}
            feature["source_input_ids"] = source["input_ids"]
            feature["source_attention_mask"] = source["attention_mask"]
        return feature

    def class_answer_ids(self) -> list[list[int]]:
        """Each class's answer tokens as a generative model learns to write them: its answer word, then EOS."""
        if self.task.kind != "classification":
            raise ValueError(f"{self.task.name} is a {self.task.kind} task: it has no fixed answers per class.")
        return [self._answer_ids(word, EncodingReport()) for word in self.task.answer_words]

    def _answer(self, pair: dict) -> str:
        if self.task.kind == "classification":
            return self.task.answer_words[pair["label"]]
        answers = pair["answers"] if self._input_side() == "target" else pair["source_answers"]
        if not answers or not answers["text"]:
            raise ValueError(f"{self.task.name} example {pair['id']!r} has no answer to train on.")
        return answers["text"][0]

    def _answer_ids(self, answer: str, report: EncodingReport) -> list[int]:
        """The answer and EOS; a decoder's answer longer than its room is cut (and counted), EOS kept."""
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        if self.architecture == "decoder" and len(ids) + 1 > self.answer_tokens:
            report.answers_truncated += 1
            ids = ids[: self.answer_tokens - 1]
        return [*ids, self.tokenizer.eos_token_id]

    def _encoder_tokens(self, pair: dict, side: str, report: EncodingReport) -> dict:
        if self.sentence_pair and not (self.view == "input_fusion" and side == "target"):
            first, second = self._fields(pair, side).values()
            encoded = self.tokenizer(first, second, truncation=False)
            if len(encoded["input_ids"]) > self.max_length:
                report.truncated += 1
                encoded = self.tokenizer(first, second, truncation="longest_first", max_length=self.max_length)
        else:
            text = self._encoder_text(pair, side)
            encoded = self.tokenizer(text, truncation=False)
            if len(encoded["input_ids"]) > self.max_length:
                report.truncated += 1
                encoded = self._truncate(text, left=self.view == "input_fusion" and side == "target")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def _truncate(self, text: str, left: bool) -> dict:
        """Input fusion puts the English text first: cutting from the left loses it before the target, as the
        authors' left truncation does; the tokenizer keeps its special tokens either way."""
        original_side = self.tokenizer.truncation_side
        self.tokenizer.truncation_side = "left" if left else original_side
        try:
            return self.tokenizer(text, truncation=True, max_length=self.max_length)
        finally:
            self.tokenizer.truncation_side = original_side

    def _fit_prompt(self, ids: list[int], report: EncodingReport) -> list[int]:
        """A prompt cut from the left (BOS kept), so that its end ("... Label: ") stays next to the answer; every
        cut is counted. Decoders leave the answer room free; an encoder-decoder's encoder reads max_length."""
        length = self.max_length - self.answer_tokens if self.architecture == "decoder" else self.max_length
        if len(ids) <= length:
            return ids
        report.truncated += 1
        keep_bos = ids[:1] if ids[0] == self.tokenizer.bos_token_id else []
        return keep_bos + ids[len(ids) - length + len(keep_bos) :]

    # ------------------------------------------------------------------ extractive QA for encoders
    def _encode_qa_windows(self, pairs: list[dict], report: EncodingReport) -> tuple[list[dict], QAFeatures]:
        side = self._input_side()
        questions = [self._qa_question(pair, side, report) for pair in pairs]
        contexts = [self._fields(pair, side)["context"] for pair in pairs]
        answer_key = "answers" if side == "target" else "source_answers"
        answers = [_first_answer(pair.get(answer_key)) for pair in pairs]
        windows = prepare_qa_features(
            self.tokenizer, questions, contexts, answers if any(answers) else None, self.max_length, self.stride
        )
        report.answers_outside_windows = windows.answers_outside_all_windows
        features = [
            {
                "input_ids": windows.input_ids[i],
                "attention_mask": windows.attention_mask[i],
                "start_positions": windows.start_positions[i],
                "end_positions": windows.end_positions[i],
            }
            for i in range(len(windows.input_ids))
        ]
        if self.view == "paired":
            source = prepare_qa_features(
                self.tokenizer,
                [pair["source_question"] for pair in pairs],
                [pair["source_context"] for pair in pairs],
                None,
                self.max_length,
                self.stride,
            )
            source_windows = {}
            for index, (example, window) in enumerate(zip(source.example_index, source.window_index, strict=True)):
                source_windows[(example, window)] = index
            for feature, example, window in zip(features, windows.example_index, windows.window_index, strict=True):
                # Target window k pairs with source window k, or the last one when the English context is shorter:
                # the window-level counterpart of pairing token k with token k.
                while (example, window) not in source_windows:
                    window -= 1
                partner = source_windows[(example, window)]
                feature["source_input_ids"] = source.input_ids[partner]
                feature["source_attention_mask"] = source.attention_mask[partner]
        return features, windows

    def _qa_question(self, pair: dict, side: str, report: EncodingReport) -> str:
        if not (self.view == "input_fusion" and side == "target"):
            return self._fields(pair, side)["question"]
        # The English question and context share the first segment with the target question; they may take half of
        # the window, so that the target context keeps room.
        budget = self.max_length // 2
        encoded = self.tokenizer(pair["source_context"], add_special_tokens=False, return_offsets_mapping=True)
        source_context = pair["source_context"]
        if len(encoded["input_ids"]) > budget:
            report.truncated += 1
            source_context = source_context[: encoded["offset_mapping"][budget - 1][1]]
        return self.task.input_fusion_encoder_template.format(**{**pair, "source_context": source_context})


def _first_answer(answers: dict | None) -> dict | None:
    if not answers or not answers["text"]:
        return None
    return {"text": answers["text"][0], "answer_start": answers["answer_start"][0]}
