"""The README's Python snippet, run as written (on a small synthetic cortex, with the CPU preset
shrunk), gives the scores that ``brainattn fit --model transformer --preset cpu`` writes to
``scores.nc`` with the same data and seed: the command builds the same estimator and calls the
same ``fit``."""

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _snippet() -> str:
    text = README.read_text()
    start = text.index("From Python (on the `synth` folder made above)")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


@pytest.mark.slow
def test_readme_snippet_and_fit_command_write_the_same_scores(tmp_path, monkeypatch):
    from brainattn.cli import main
    from brainattn.data import synth
    from brainattn.encoders import transformer
    from brainattn.io import load_netcdf

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BRAINATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BRAINATTN_PROGRESS", "0")
    for k, v in {"width": 16, "heads": 2, "ffn": 16, "epochs": 2, "batch_size": 16}.items():
        monkeypatch.setitem(transformer.CPU_PRESET, k, v)  # the preset both paths read
    synth.generate("synth", subjects=1, images=60, seed=0, n_ev_roi=12, n_category_roi=8,
                   n_unlabelled=10, n_jobs=1)
    ns: dict = {}
    exec(compile(_snippet(), "README.md", "exec"), ns)  # noqa: S102 - the README's own code
    assert main(["fit", "synth", "--model", "transformer", "--preset", "cpu",
                 "--out", "run"]) == 0
    cli = load_netcdf(tmp_path / "run" / "scores.nc")
    ours = ns["scores"]
    np.testing.assert_array_equal(ours["score"].values, cli["score"].values)
    np.testing.assert_array_equal(ours["roi_median"].values, cli["roi_median"].values)
    assert list(ours["roi"].values) == list(cli["roi"].values)
    assert ns["est"].query_names_ == transformer.TransformerBrainEncoder.load(
        tmp_path / "run").query_names_
    assert np.isfinite(ns["r"]).all() and ns["search"].best_params_["pool"] in ("mean", "pca")
