"""``python -m sfs`` is the ``sfs`` command."""

import sys

from sfs.cli import main

sys.exit(main())
