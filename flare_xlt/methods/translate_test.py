"""Translate-test: the stage-1 English model scores the test set's machine translation into English."""

from .base import Method

TRANSLATE_TEST = Method(
    name="translate-test",
    summary="the stage-1 model on the test set's English translation",
    view="source",
    reads_test_translation=True,
    trains=False,
    task_kinds=("classification",),
    unfit_reason="for extractive QA the English answer spans would need projecting back into the target context, "
    "which flare-xlt does not do; it runs for classification tasks.",
)
