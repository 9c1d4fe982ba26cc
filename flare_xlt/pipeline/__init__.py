"""The experiment workflow: English fine-tuning, transfer with every method, evaluation and run directories.

The Python API of the commands (docs/pipeline.md, "Python API"): finetune, transfer and evaluate take the options of
flare-xlt finetune, transfer and evaluate as arguments and return the run folder (the scores, for evaluate);
load_recipe, plan, step_status, describe_plan and run_recipe are flare-xlt run in parts.
"""

from ..lazy import lazy_attributes

__getattr__, __all__ = lazy_attributes(
    __name__,
    {
        ".checkpoints": ("NonFiniteTrainingError",),
        ".loading": ("LoadedModel", "load_model"),
        ".predict": ("predict",),
        ".recipe_file": ("Recipe", "load_recipe"),
        ".plans": ("PlannedStep", "StepStatus", "describe_plan"),
        ".recipes": ("plan", "run_recipe", "step_status"),
        ".finished_runs": ("evaluate",),
        ".runs": ("finetune", "transfer"),
        "..methods": ("METHODS",),
        ".settings": ("AdapterConfig", "TrainConfig"),
    },
)
