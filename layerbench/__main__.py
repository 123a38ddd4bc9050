"""``python -m layerbench``: the same command as ``layerbench``."""

import sys

from layerbench.entry import main

sys.exit(main())
