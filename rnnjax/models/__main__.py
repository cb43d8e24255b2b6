"""``python -m rnnjax.models --task NAME ...``: the same as ``rnnjax train --task NAME ...``."""

import sys

from rnnjax.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
