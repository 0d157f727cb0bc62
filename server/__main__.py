"""`python -m server` from a checkout, `python -m aggregator.server` when installed.

Only delegates: the modules are always imported as aggregator.server.*, never twice
under two names."""

import sys

from aggregator.server.command import main

sys.exit(main())
