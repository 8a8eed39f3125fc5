"""``python -m registry.cli``: the ``proconsul`` command."""

import sys

from registry.cli.app import main

sys.exit(main())
