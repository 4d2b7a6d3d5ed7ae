"""Fixtures for the data tests: one small synthetic data set per test session (per worker)."""

import pytest

from brainattn.data import synth

SMALL = dict(subjects=2, images=120, seed=7, image_size=64, test_images=4, n_ev_roi=40,
             n_category_roi=30, n_unlabelled=120)


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory):
    """Path of a small synthetic data set (2 subjects, 120 images of 64 px)."""
    out = tmp_path_factory.mktemp("synth") / "small"
    synth.generate(out, **SMALL)
    return out
