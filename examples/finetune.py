"""Fine-tune an ImageNet backbone on a fine-grained data set, TLlib-style, with a --mode switch.

    python examples/finetune.py --quick-start                          # offline, ~1.5 min on 2 CPU cores
    python examples/finetune.py -d cub200 -a resnet50 --mode tune      # the main job (data under data/cub200)
    python examples/finetune.py -d cub200 -a resnet50 --mode train     # TLlib's baseline, for comparison
    python examples/finetune.py -c configs/paper/cub200_tune.yaml      # settings from a file; flags override
    torchrun --nproc_per_node 2 -- examples/finetune.py -d cub200 ...   # DistributedDataParallel

The program is tllib_tune.finetune (installed as `tllib-tune finetune`): its configuration
(tllib_tune.finetune.config), the runner's phases (build, resume, fit, finish) and its hooks
(checkpoints, metrics, mode schedule). `python examples/finetune.py --help` lists the flags; the exit
status is 0 done, 1 a user error, 2 bad command line or config file, 3 the loss became non-finite,
128+N stopped by signal N after saving latest.pt.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a source checkout: make tllib_tune importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tllib_tune.finetune.cli import main  # noqa: E402  (after the path set-up above)

if __name__ == "__main__":
    sys.exit(main(prog="finetune.py"))
