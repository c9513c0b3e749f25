"""Time and memory of one fine-tuning iteration in every ConvBN mode (the paper's Figure 3 / Appendix E).

    python scripts/benchmark_modes.py --arch resnet50 --batch-sizes 8,32 --input-sizes 160,112

The same program as `tllib-tune benchmark` (tllib_tune.benchmark): for every (batch size, input size) the
modes run interleaved, in rounds whose order is balanced (tllib_tune.benchmark.timing_order); activation
memory is the exact saved-for-backward byte count, on CUDA the peak allocated memory too, everywhere the
minor page faults per iteration. Writes results.csv, a TensorBoard run and a PNG plot (with the "plot"
extra) to --out, prints the table, then Tune's ratios against the product's targets. --help lists the
flags.
"""

import sys

from tllib_tune.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
