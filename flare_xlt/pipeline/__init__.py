"""The experiment workflow: English fine-tuning, transfer with every method, evaluation and run directories."""

from .checkpoints import NonFiniteTrainingError
from .models import LoadedModel, load_model
from .predict import predict
from .runs import METHODS, AdapterConfig, TrainConfig, finetune, transfer

__all__ = [
    "METHODS",
    "AdapterConfig",
    "LoadedModel",
    "NonFiniteTrainingError",
    "TrainConfig",
    "finetune",
    "load_model",
    "predict",
    "transfer",
]
