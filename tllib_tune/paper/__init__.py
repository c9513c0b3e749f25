"""The Tune-mode paper's claims, reproduced offline on a CPU: a genuine transfer experiment in every mode.

A zoo backbone is pretrained in train mode on the synthetic *source* set (cached under ``data/``), then
fine-tuned with TLlib's recipe on the synthetic *target* set, whose classes are all new, in train, eval,
tune, deploy and inplace-abn mode over several seeds. The outputs are the paper's Table 3 / Table 5
layout (top-1, activation memory, time per iteration, the savings against train mode), its Figure 2
(the pretrained scaling coefficients, the training losses of eval, tune and deploy) and a float64 check
that tune follows eval's trajectory to round-off while deploy drifts.

    python scripts/reproduce_paper.py            # about 13 minutes on 2 quiet CPU cores
    python scripts/reproduce_paper.py --fast     # about a minute

Modules: ``settings`` (what is run), ``data``, ``pretrain`` (the cached source backbone), ``transfer``
(one fine-tuning run), ``float64``, ``report`` (tables and figures), ``experiment`` (the phases),
``progress``, ``cli`` (``main(argv) -> int``).
"""

from .cli import main
from .experiment import run_experiment
from .settings import DEFAULT, FAST, MODES, Settings, settings_checksum

__all__ = ["main", "run_experiment", "Settings", "DEFAULT", "FAST", "MODES", "settings_checksum"]
