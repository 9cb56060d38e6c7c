"""Self-distillation training: the config (``config``), the recipe (``recipe``: setup / step / evaluate / save),
its log (``runlog``), checkpoints (``checkpoint``) and model cards (``card``)."""

from sdlib.train.config import TrainConfig, load_config
from sdlib.train.recipe import SelfDistillation, distillation_loss, finished, run_state, train
from sdlib.train.runlog import LOG_FILE, read_log

__all__ = ["LOG_FILE", "SelfDistillation", "TrainConfig", "distillation_loss", "finished", "load_config", "read_log",
           "run_state", "train"]
