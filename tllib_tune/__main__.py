"""``python -m tllib_tune COMMAND ...``: the same as the ``tllib-tune`` console script (tllib_tune.cli)."""

import sys

from .cli import main

sys.exit(main())
