"""Zero-shot: the stage-1 English model scores the target-language test set as it is."""

from .base import Method

ZERO_SHOT = Method(
    name="zero-shot",
    summary="the stage-1 model on the target text, untouched",
    view="target",
    reads_test_translation=False,
    trains=False,
)
