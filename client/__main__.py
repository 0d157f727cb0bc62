"""`python -m client --help` from a checkout, `python -m aggregator.client` when
installed (the `aggregator` command)."""

import sys

from aggregator.client.cli import main

sys.exit(main())
