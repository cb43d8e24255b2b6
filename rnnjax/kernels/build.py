"""``python -m rnnjax.kernels.build``: compiles the native kernels before first use.

``make`` runs it when it installs the package, so no compiler ever runs inside a trace. A
machine without ``g++`` still works: the ``"fused_cpu"`` backend then answers "not built" and
``backend="auto"`` uses ``"fused"``; `rnnjax.analysis.jacobian_norms` runs its Lanczos rounds
in XLA.
"""

from __future__ import annotations

import sys

from rnnjax.analysis import _lanczos_cpu
from rnnjax.kernels import fused_cpu


def main() -> int:
    """Builds each native library; prints its path, or why it could not be built."""
    for name, build, fallback in (
        ("fused_cpu", fused_cpu.build, "backend='auto' will use 'fused'"),
        ("lanczos_cpu", _lanczos_cpu.LIBRARY.build, "jacobian_norms will run in XLA"),
    ):
        try:
            print(build())
        except RuntimeError as e:
            print(f"{name} not built ({e}); {fallback}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
