"""The fine-tuning application as library code: settings, the runner and its hooks, the command line.

    from tllib_tune.finetune import FinetuneConfig, Runner

    config = FinetuneConfig(dataset="cub200", arch="resnet50", mode="tune", log="runs/cub")
    Runner(config).run()

Modules: :mod:`.config` (the settings dataclass), :mod:`.config_files` (YAML files, the shipped ones),
:mod:`.schedule` (modes by epoch), :mod:`.build` (device, data, model), :mod:`.runner` (build, resume,
fit, finish), :mod:`.callbacks` (mode schedule, metrics, checkpoints), :mod:`.results` (what an epoch
measured), :mod:`.errors` (what went wrong and the fix), :mod:`.cli` (``tllib-tune finetune``).
"""

from ..utils.distributed import ProcessEnv, main_process_first
from .callbacks import CheckpointHook, Hook, MetricsHook, ModeScheduleHook
from .config import FinetuneConfig
from .config_files import find_config, list_configs, read_config_file
from .errors import ConfigError, Diverged, FinetuneError, Stopped
from .results import EpochResult, EvalResult, TrainResult
from .runner import Runner, RunState
from .schedule import MODES, mode_for_epoch, parse_mode_schedule

__all__ = [
    "FinetuneConfig",
    "Runner",
    "RunState",
    "Hook",
    "ModeScheduleHook",
    "MetricsHook",
    "CheckpointHook",
    "EpochResult",
    "TrainResult",
    "EvalResult",
    "FinetuneError",
    "ConfigError",
    "Diverged",
    "Stopped",
    "MODES",
    "parse_mode_schedule",
    "mode_for_epoch",
    "find_config",
    "list_configs",
    "read_config_file",
    "ProcessEnv",
    "main_process_first",
]
