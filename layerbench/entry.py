"""The ``layerbench`` console entry point.

Triton decides when it is first imported whether its kernels run in the interpreter, so
``--device cpu`` must set TRITON_INTERPRET=1 before the command's modules (which import torch and
Triton) are loaded.  This module reads only the command line, then hands over to ``layerbench.cli``.
"""

from __future__ import annotations

import os
import sys


def wants_cpu(argv: list[str]) -> bool:
    """Whether the command line asks for ``--device cpu`` (either spelling)."""
    return "--device=cpu" in argv or any(a == "--device" and b == "cpu" for a, b in zip(argv, argv[1:]))


def main() -> int:
    if wants_cpu(sys.argv[1:]):
        os.environ["TRITON_INTERPRET"] = "1"
    from layerbench.cli import main as cli_main  # lazy: only after TRITON_INTERPRET is set (see above)

    return cli_main()
