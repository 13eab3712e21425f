"""``python -m lipsdp``: the ``lipsdp`` command (see :mod:`lipsdp.cli`)."""

import sys

from .cli import main

sys.exit(main())
