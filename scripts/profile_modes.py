"""Where one mode's iteration time goes compared with another's, op by op (torch.profiler).

    python scripts/profile_modes.py --arch resnet50 --batch-size 8 --input-size 112 --modes tune,deploy

The same program as `tllib-tune profile` (tllib_tune.benchmark.profile): the benchmark's iteration for
two modes, interleaved, every timed iteration profiled; prints each mode's median wall time and minor
page faults per iteration, then the operators whose self time differs most between the two modes
(milliseconds per iteration, with call counts). Use the benchmark for the times themselves.
"""

import sys

from tllib_tune.benchmark.cli import profile_main

if __name__ == "__main__":
    sys.exit(profile_main())
