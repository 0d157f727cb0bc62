"""`python -m client --help`."""

import sys

from client.cli import main

sys.exit(main())
