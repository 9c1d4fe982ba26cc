"""Tasks and data: task definitions, loading, source/target pairing, formatting and collation."""

from .collator import PairedCollator
from .formatting import ANSWER_TOKENS, ARCHITECTURES, VIEWS, EncodingReport, TaskEncoder
from .pairing import pair_views
from .sources import label_id, load_hub_view, load_original_view, load_record_file, load_task_splits, read_rows
from .spec import NUSAX, TASKS, TYDIQA, XNLI, TaskSpec, get_task, load_task_spec

__all__ = [
    "ANSWER_TOKENS",
    "ARCHITECTURES",
    "NUSAX",
    "TASKS",
    "TYDIQA",
    "VIEWS",
    "XNLI",
    "EncodingReport",
    "PairedCollator",
    "TaskEncoder",
    "TaskSpec",
    "get_task",
    "label_id",
    "load_hub_view",
    "load_original_view",
    "load_record_file",
    "load_task_spec",
    "load_task_splits",
    "pair_views",
    "read_rows",
]
