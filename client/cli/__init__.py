"""`python -m client`: publish simulated or real events, read stats and events, tail
a topic, check health.

main.py       arguments (global options work before or after the command), errors, exit codes
publish.py    the publish command: streams, live progress, the summary
jsonlines.py  a JSON-lines file → events (`publish --file`)
reads.py      stats, events and health
tail.py       tail: a topic's events in delivery order, optionally live (--follow)
exit_codes.py 0 success, 1 a failure the output explains, 2 bad arguments, 130 interrupted
"""

from aggregator.client.cli.main import main

__all__ = ["main"]
