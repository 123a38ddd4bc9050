"""``python -m layerbench``: the same command as ``layerbench``."""

import sys

from layerbench.cli import main

sys.exit(main())
