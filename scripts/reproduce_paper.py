"""Reproduce the Tune-mode paper's claims offline (Table 3, Table 5, Figure 2, a float64 check).

    python scripts/reproduce_paper.py                 # defaults: about 13 minutes on 2 quiet CPU cores
    python scripts/reproduce_paper.py --fast          # about a minute (what the tests run)
    python scripts/reproduce_paper.py --out benchmarks/paper-cpu --seeds 0,1,2 --modes train,tune

A thin wrapper over :func:`tllib_tune.paper.main`; see docs/reproducing_the_paper.md.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a source checkout: make tllib_tune importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tllib_tune.paper import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
