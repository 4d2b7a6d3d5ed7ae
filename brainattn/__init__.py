"""brainattn: attention for computational neuroscience.

Subpackages (imported on demand, nothing heavy here):

- :mod:`brainattn.data` -- fMRI data sets (Algonauts/NSD layout, NIfTI/GIfTI/MGH), noise
  ceilings, the embedded synthetic visual cortex.
- :mod:`brainattn.kernels` -- attention with dense / low-rank additive bias (Triton on CUDA).
- :mod:`brainattn.encoders` -- transformer brain encoders and their baselines.
- :mod:`brainattn.psychophysics` -- maximum likelihood difference scaling, Fisher information.
- :mod:`brainattn.theory` -- Pavlovian attention, semiotic networks, consciousness prior.
- :mod:`brainattn.report` -- figures and the HTML run report.
"""

__version__ = "0.1.0"

from brainattn.errors import BrainAttnError  # noqa: E402

__all__ = ["__version__", "BrainAttnError"]
