"""``python -m brainattn`` (also what ``torchrun -m brainattn`` runs)."""

import signal
import sys

try:
    from brainattn.cli import main

    rc = main()
except KeyboardInterrupt:  # Ctrl-C while the command loads or just after it finished
    print("error: interrupted", file=sys.stderr)
    rc = 130
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the work is over: a late Ctrl-C changes nothing
sys.exit(rc)
