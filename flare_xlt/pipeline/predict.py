"""Predictions of a (FLARE) model on paired examples, in the form the metrics take."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..adapter.source_prepass import length_sorted_batches, paired_length
from ..metrics import extract_generated_answer, parse_verbalized
from ..qa import postprocess_qa_predictions
from ..tasks import PairedCollator, TaskEncoder, TaskSpec


def predict(
    model,
    tokenizer,
    task: TaskSpec,
    architecture: str,
    pairs: list[dict],
    view: str,
    max_length: int,
    batch_size: int = 32,
    source_embeds=None,
    sort_by_length: bool = True,
    progress: bool = True,
) -> tuple[list, list[str]]:
    """(predictions, raw outputs), in the order of `pairs`. Classification: class ids, or None for a generation that
    names no class. QA: answer strings. `source_embeds(keys)` gives FLARE-MT states for a batch of features, by the
    keys of TaskEncoder.state_texts (one per QA window). With `sort_by_length`, batches hold features of similar
    length (longest first), so that a short example is not padded to a long one's length; the results are put back
    in input order. `progress`: a bar on a terminal (False: none, for a caller that shows its own)."""
    model.eval()
    encoder = TaskEncoder(task, tokenizer, architecture, view=view, max_length=max_length, for_generation=True)
    features, _, windows = encoder.encode(pairs)
    state_keys = [key for key, _ in encoder.state_texts(pairs)] if source_embeds is not None else None
    collate = PairedCollator.for_tokenizer(tokenizer)
    device = next(model.parameters()).device
    if sort_by_length:
        batches = length_sorted_batches([paired_length(feature) for feature in features], max_items=batch_size)
    else:
        batches = [
            list(range(start, min(start + batch_size, len(features)))) for start in range(0, len(features), batch_size)
        ]
    outputs, start_logits, end_logits = [None] * len(features), [None] * len(features), [None] * len(features)
    bar = tqdm(batches, desc=f"evaluate {task.name}", unit="batch", disable=None if progress else True)
    for indices in bar:
        batch = {
            key: value.to(device)
            for key, value in collate([features[index] for index in indices]).items()
            if key not in _LABEL_KEYS
        }
        if source_embeds is not None:
            embeds, mask = source_embeds([state_keys[index] for index in indices])
            batch["source_embeds"], batch["source_attention_mask"] = embeds.to(device), mask.to(device)
        with torch.no_grad():
            if architecture in ("decoder", "seq2seq"):
                generated = model.generate(
                    **batch,
                    max_new_tokens=encoder.answer_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
                # A decoder-only model continues its prompt; an encoder-decoder model starts a new sequence.
                new_tokens = generated[:, batch["input_ids"].shape[1] :] if architecture == "decoder" else generated
                texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            elif task.kind == "classification":
                texts = [str(label) for label in model(**batch).logits.argmax(-1).tolist()]
            else:
                result = model(**batch)
                for index, start, end in zip(indices, result.start_logits, result.end_logits, strict=True):
                    start_logits[index], end_logits[index] = start.float().cpu(), end.float().cpu()
                continue
        for index, text in zip(indices, texts, strict=True):
            outputs[index] = text
    if task.kind == "extractive_qa" and architecture == "encoder":
        contexts = [pair["source_context"] if view == "source" else pair["context"] for pair in pairs]
        length = max(len(row) for row in start_logits)
        padded_start = torch.stack([torch.nn.functional.pad(row, (0, length - len(row))) for row in start_logits])
        padded_end = torch.stack([torch.nn.functional.pad(row, (0, length - len(row))) for row in end_logits])
        answers = postprocess_qa_predictions(contexts, windows, padded_start, padded_end)
        return answers, answers
    if task.kind == "classification":
        if architecture != "encoder":
            return [parse_verbalized(text, task.answer_words) for text in outputs], outputs
        return [int(label) for label in outputs], outputs
    return [extract_generated_answer(text) for text in outputs], outputs


_LABEL_KEYS = ("labels", "start_positions", "end_positions")
