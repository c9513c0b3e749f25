"""What can go wrong in a fine-tuning run, in the library's terms, and how to fix it.

Messages name the settings of :class:`~tllib_tune.finetune.config.FinetuneConfig` in backquotes
(`batch_size`); a command line turns them into its flags (``--batch-size``, see
:func:`tllib_tune.utils.cli.to_flags`).
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "FinetuneError",
    "ConfigError",
    "Diverged",
    "Stopped",
    "one_line",
    "divergence_advice",
    "out_of_memory_advice",
]


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (some messages carry a hint on a second line)."""
    return " ".join(str(exc).split()) or type(exc).__name__


class FinetuneError(Exception):
    """A problem the user can fix (data, weights, checkpoint, device, memory); the message says how."""


class ConfigError(FinetuneError, ValueError):
    """A setting that cannot work; ``argument`` names it, ``source`` says where its value came from
    (a config file's path, or None)."""

    def __init__(self, message: str, *, argument: Optional[str] = None, source: Optional[str] = None) -> None:
        super().__init__(message)
        self.argument = argument
        self.source = source


class Diverged(FinetuneError):
    """The loss became inf or NaN; the message says where, which checkpoint is still good and what to try."""


class Stopped(Exception):
    """SIGINT or SIGTERM stopped the run after latest.pt was written; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def divergence_advice(mode: str, amp: str, pretrained: str) -> str:
    """What to change after a non-finite loss in ``mode``, given the run's ``amp`` and ``pretrained``."""
    if mode == "deploy":
        return (
            "Deploy mode is unstable for fine-tuning: it trains the folded weights W*s directly, so "
            "updates are rescaled by the BatchNorm statistics. Tune mode computes the same function "
            "stably with the same memory: rerun with `mode` tune"
        )
    tips = []
    if pretrained.lower() == "none" and mode in ("eval", "tune"):
        tips.append(
            f"with `pretrained` none, give train mode more epochs before {mode} mode (a random network's "
            "BatchNorm running statistics take many steps to match the data)"
        )
    tips.append("lower `lr` (or `lr_gamma` if the rate grows)")
    if amp == "fp16":
        tips.append("use `amp` bf16 (float32's range) or none")
    elif amp == "bf16":
        tips.append("try `amp` none")
    text = "; or ".join(tips)
    return text[0].upper() + text[1:]


def out_of_memory_advice(mode: str, batch_size: int, input_size: int, amp: str, detail: str) -> str:
    """The message for running out of memory in ``mode`` (``detail``: the first line of torch's error)."""
    advice = (
        "use a smaller `batch_size` or `input_size`"
        if mode == "tune"
        else "use `mode` tune (it keeps only each ConvBN's input for backward) or a smaller `batch_size`"
    )
    return (
        f"out of memory in {mode} mode with `batch_size` {batch_size} at {input_size} px "
        f"(amp {amp}): {advice}; `amp` fp16/bf16 also saves memory. ({detail})"
    )
