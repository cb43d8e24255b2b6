"""``python -m rnnjax.models --task NAME ...``: the same as ``rnnjax train --task NAME ...``."""

import sys

from rnnjax.models.registry import main

sys.exit(main(prog="python -m rnnjax.models"))
