"""Encoder tests run single-threaded: tiny tensors on a shared 2-core machine are much faster
without OpenMP threads competing (and results are bit-reproducible either way)."""

import torch

torch.set_num_threads(1)
