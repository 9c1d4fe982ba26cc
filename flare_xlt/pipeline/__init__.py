"""The experiment workflow: English fine-tuning, transfer with every method, evaluation and run directories.

The Python API of the commands (docs/pipeline.md, "Python API"): finetune, transfer and evaluate take the options of
flare-xlt finetune, transfer and evaluate as arguments and return the run folder (the scores, for evaluate);
load_recipe, plan, step_status, describe_plan and run_recipe are flare-xlt run in parts.
"""

from .checkpoints import NonFiniteTrainingError
from .models import LoadedModel, load_model
from .predict import predict
from .recipes import PlannedStep, Recipe, describe_plan, load_recipe, plan, run_recipe, step_status
from .runs import METHODS, AdapterConfig, TrainConfig, evaluate, finetune, transfer

__all__ = [
    "METHODS",
    "AdapterConfig",
    "LoadedModel",
    "NonFiniteTrainingError",
    "PlannedStep",
    "Recipe",
    "TrainConfig",
    "describe_plan",
    "evaluate",
    "finetune",
    "load_model",
    "load_recipe",
    "plan",
    "predict",
    "run_recipe",
    "step_status",
    "transfer",
]
