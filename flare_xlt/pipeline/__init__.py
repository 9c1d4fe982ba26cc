"""The experiment workflow: English fine-tuning, transfer with every method, evaluation and run directories."""

from .models import LoadedModel, load_model
from .predict import predict
from .runs import METHODS, AdapterConfig, TrainConfig, finetune, transfer

__all__ = ["METHODS", "AdapterConfig", "LoadedModel", "TrainConfig", "finetune", "load_model", "predict", "transfer"]
