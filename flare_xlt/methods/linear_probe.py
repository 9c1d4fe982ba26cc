"""Linear probe: the frozen base encoder, read with the stage-1 run's pooling, and a logistic regression fitted on
the English training split's features, scoring the target-language test set zero-shot. It fits on the English
examples its stage-1 run read (that run's recorded max_train_samples, not the transfer's), so that the floor and
stage 1 see the same data.

It fine-tunes nothing and reads no translation: it is the floor of a table, the score that features the encoder
already has give. A fine-tuned number below it means a broken setup (too few steps, a head that reads the encoder
another way than it was trained). The features are the final hidden states pooled as the stage-1 run records
(pipeline/pooling.py): the mean or the last over the real tokens, or for `cls` the first token's state itself (not
BERT's pooler, which the checkpoint may lack). They are standardised (scikit-learn's StandardScaler, fitted on the
English features) and read by LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER), lbfgs, deterministic. A
finished run is scored again (`evaluate`) by fitting the same probe again, which gives the same head.

The English features are the same for every target language and seed of one base model, so they are kept in a
cache folder beside the runs (PROBE_FEATURES), one safetensors file per key: the base encoder's config, dtypes,
device and weights (checksums, as the source cache's fingerprint), the pooling, and every batch's token ids and mask.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from .base import Method

if TYPE_CHECKING:
    import torch
    from torch import nn

# The logistic regression's inverse regularisation strength and iteration limit: scikit-learn's default C on
# standardised features, and enough iterations for lbfgs to converge on a few thousand examples of a few hundred
# dimensions without a ConvergenceWarning.
PROBE_C = 1.0
PROBE_MAX_ITER = 2000
PROBE_FEATURES = ".probe-features"  # the English features' cache, a folder beside the runs that share it


def probe_features(encoder: nn.Module, input_ids, attention_mask, pooling: str | None) -> torch.Tensor:
    """(B, D) float32 features of a batch: the encoder's final hidden states pooled as `pooling` says (None, the
    architecture's own head, reads the first token as cls does)."""
    from ..pipeline.pooling import pool

    hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, D)
    if pooling in (None, "cls"):
        return hidden[:, 0].float()
    return pool(hidden, attention_mask, pooling).float()


def english_features_key(base: nn.Module, batches: list[dict], pooling: str | None) -> str:
    """The cache key of the English features: everything they are a function of (module docstring)."""
    from ..adapter.source_cache import weight_checksum

    parameters = list(base.parameters())
    identity = {
        "config": base.config.to_dict(),
        "dtypes": sorted({str(parameter.dtype) for parameter in parameters}),
        "device": parameters[0].device.type,
        "weights": [weight_checksum(parameter).item() for parameter in parameters],
        "pooling": pooling,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    for batch in batches:
        for name in ("input_ids", "attention_mask"):
            digest.update(f"{name}{tuple(batch[name].shape)}".encode())
            digest.update(batch[name].contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def probe_classifier():
    """The probe's unfitted head: standardisation, then LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER))


class LinearProbeClassifier:
    """Scores a batch as a classification model would: logits (B, C), here the log-probabilities of the fitted
    logistic regression, -inf for a class the English training data lacks. It holds the frozen encoder and a
    scikit-learn pipeline; it is no torch module."""

    def __init__(self, encoder: nn.Module, pooling: str | None, classifier, num_labels: int) -> None:
        self.encoder, self.pooling, self.classifier, self.num_labels = encoder, pooling, classifier, num_labels

    def eval(self) -> LinearProbeClassifier:
        self.encoder.eval()
        return self

    def parameters(self):
        return self.encoder.parameters()

    def __call__(self, input_ids, attention_mask, **_) -> SimpleNamespace:
        import torch

        with torch.no_grad():
            features = probe_features(self.encoder, input_ids, attention_mask, self.pooling)
        log_probs = self.classifier.predict_log_proba(features.cpu().numpy())  # (B, classes seen in training)
        logits = torch.full((features.shape[0], self.num_labels), float("-inf"), device=input_ids.device)
        columns = torch.as_tensor(self.classifier.classes_, device=input_ids.device)
        logits[:, columns] = torch.as_tensor(log_probs, dtype=logits.dtype, device=input_ids.device)
        return SimpleNamespace(logits=logits)


@dataclass(frozen=True)
class LinearProbe(Method):
    def fit(
        self,
        base: nn.Module,
        encoder,
        pairs: list[dict],
        pooling: str | None,
        batch_size: int,
        cache: Path | None = None,
    ):
        """The probe fitted on `pairs` (English training examples, their target view) as `encoder` (a TaskEncoder)
        reads them, on the frozen `base` encoder; their features read from and written to the folder `cache` when
        given (module docstring)."""
        import numpy
        import torch
        from safetensors.torch import load_file

        from ..io import save_tensors_atomic
        from ..tasks import PairedCollator

        features, _, _ = encoder.encode(pairs)
        collate = PairedCollator.for_tokenizer(encoder.tokenizer)
        batches = [collate(features[start : start + batch_size]) for start in range(0, len(features), batch_size)]
        stored = None if cache is None else Path(cache) / f"{english_features_key(base, batches, pooling)}.safetensors"
        if stored is not None and stored.is_file():
            pooled = load_file(stored)["features"]  # (N, D)
        else:
            device = next(base.parameters()).device
            base.eval()
            with torch.no_grad():
                pooled = torch.cat(
                    [
                        probe_features(base, batch["input_ids"].to(device), batch["attention_mask"].to(device), pooling)
                        for batch in batches
                    ]
                ).cpu()  # (N, D)
            if stored is not None:
                save_tensors_atomic(stored, {"features": pooled.contiguous()})
        inputs = pooled.numpy()
        labels = numpy.array([pair["label"] for pair in pairs])
        classifier = probe_classifier().fit(inputs, labels)
        return LinearProbeClassifier(base, pooling, classifier, len(encoder.task.label_names))


LINEAR_PROBE = LinearProbe(
    name="linear-probe",
    summary="logistic regression on the frozen base encoder's pooled English features, zero-shot",
    view="target",
    reads_test_translation=False,
    trains=False,
    fits_source_probe=True,
    train_settings=("max_train_samples",),
    architectures=("encoder",),
    task_kinds=("classification",),
    unfit_reason="the linear probe reads an encoder's pooled features with a classifier; it runs for classification "
    "tasks on encoder models only.",
)
