"""`python -m server` from a checkout, `python -m aggregator.server` when installed.

Only delegates: the modules are always imported as aggregator.server.*, never twice
under two names."""

import sys

try:
    from aggregator.server.main import main

    sys.exit(main())
except KeyboardInterrupt:  # Ctrl-C before main() handles signals: nothing has started yet
    sys.exit(130)
