"""Shared test set-up.

Without a GPU, Triton kernels run in interpreter mode; the variable must be set before
``triton`` is imported, hence here. Progress bars are silenced.
"""

import os

os.environ.setdefault("BRAINATTN_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass
