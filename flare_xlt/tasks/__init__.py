"""Tasks and data: task definitions, loading, source/target pairing, formatting and collation."""

from ..lazy import lazy_attributes

__getattr__, __all__ = lazy_attributes(
    __name__,
    {
        ".collator": ("PairedCollator",),
        ".formatting": ("ANSWER_TOKENS", "ARCHITECTURES", "VIEWS", "EncodingReport", "TaskEncoder"),
        ".example_pairing": ("pair_views",),
        ".sources": (
            "label_id",
            "load_hub_view",
            "load_original_view",
            "load_record_file",
            "load_task_splits",
            "read_rows",
            "read_stream_rows",
        ),
        ".spec": ("NUSAX", "TASKS", "TYDIQA", "XNLI", "TaskSpec", "get_task", "load_task_spec"),
    },
)
