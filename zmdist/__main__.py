"""``python -m zmdist`` is the ``zmdist`` command."""

import sys

from zmdist.cli import main

sys.exit(main())
