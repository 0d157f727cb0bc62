"""The CLI's exit codes, as docs/client.md lists them."""

OK = 0
FAILED = 1  # a failure the output explains
USAGE = 2  # bad arguments (argparse's own code)
INTERRUPTED = 130  # Ctrl-C: the shell's code for a process ended by SIGINT
