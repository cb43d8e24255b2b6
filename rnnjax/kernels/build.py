"""``python -m rnnjax.kernels.build``: compiles the native kernels before first use.

``make`` runs it when it installs the package, so no compiler ever runs inside a trace. A
machine without ``g++`` still works: the ``"fused_cpu"`` backend then answers "not built" and
``backend="auto"`` uses ``"fused"``.
"""

from __future__ import annotations

import sys

from rnnjax.kernels import fused_cpu


def main() -> int:
    """Builds ``fused_cpu``; prints the library's path, or why it could not be built."""
    try:
        print(fused_cpu.build())
    except RuntimeError as e:
        print(f"fused_cpu not built ({e}); backend='auto' will use 'fused'", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
