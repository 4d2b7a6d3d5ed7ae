"""``python -m brainattn`` (also what ``torchrun -m brainattn`` runs)."""

import sys

from brainattn.cli import main

sys.exit(main())
