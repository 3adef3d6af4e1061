"""The reference trainer: tiny PyTorch models that reproduce each seed incident and re-run any run dir it wrote."""

from analyzer.trainer.config import TrainConfig, load_scenario
from analyzer.trainer.train import train

__all__ = ["TrainConfig", "load_scenario", "train"]
