"""``brainattn simulate``: config resolution, outputs, atomicity and one-line errors."""

import importlib
import importlib.util
import json

import numpy as np
import pytest

from brainattn.cli import main
from brainattn.errors import ConfigError
from brainattn.io import load_netcdf
from brainattn.theory import consciousness as cs
from brainattn.theory import pavlovian as pv
from brainattn.theory._config import merge_config, read_config_file, resolve_config
from brainattn.theory.cli import run_simulation

TINY_PAVLOVIAN = {
    "d_k": [16, 32], "load": [0.25, 0.5, 1], "n_trials": 8, "n_queries": 8,
    "worst_case_trials": 20, "rules_d_k": 16, "rules_n": [4, 8, 16, 32], "rules_trials": 4,
    "delta_epochs": 2, "prop_d_k": 16, "prop_n": 4, "prop_layers": 2, "prop_heads": [1, 2],
    "prop_trials": 8,
}
TINY_CONSCIOUSNESS = {
    "n_seeds": 2, "n_variables": 4, "n_distractors": 2, "n_distractor_types": 4, "d_id": 8,
    "d_model": 8, "d_state": 4, "hidden": 8, "k_values": [2], "steps": 10, "batch_size": 16,
    "n_test": 50,
}


@pytest.fixture
def tiny_pv(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_PAVLOVIAN))
    return path


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ------------------------------------------------------------------------ config resolution


@pytest.mark.parametrize("module", [pv, cs])
def test_presets_share_one_schema_and_validate(module):
    assert set(module.QUICK) == set(module.FULL)
    module.validate_config(module.QUICK)
    module.validate_config(module.FULL)
    assert resolve_config(module, "full") == module.FULL
    assert resolve_config(module.__name__.rsplit(".", 1)[1]) == module.QUICK


def test_json_and_toml_files_are_merged(tmp_path):
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"d_k": [8, 16], "error_rate": 0.1, "n_trials": 5.0}))
    cfg = resolve_config("pavlovian", "quick", j)
    assert cfg["d_k"] == [8, 16] and cfg["error_rate"] == 0.1 and cfg["n_trials"] == 5
    assert isinstance(cfg["n_trials"], int)
    assert cfg["rules_d_k"] == pv.QUICK["rules_d_k"]  # untouched keys keep the preset's value
    t = tmp_path / "c.toml"
    t.write_text('mode = "soft"\nk_values = [1, 3]\nnoise = 0\n')
    cfg = resolve_config("consciousness", "full", t, {"seed": 7})
    assert cfg["mode"] == "soft" and cfg["k_values"] == [1, 3] and cfg["noise"] == 0.0
    assert cfg["seed"] == 7 and cfg["steps"] == cs.FULL["steps"]
    assert read_config_file(t)["mode"] == "soft"


def test_unknown_key_lists_valid_keys(tmp_path):
    j = tmp_path / "bad.json"
    j.write_text(json.dumps({"dk": [8]}))
    with pytest.raises(ConfigError) as exc:
        resolve_config("pavlovian", config_file=j)
    msg = str(exc.value)
    assert "'dk'" in msg and str(j) in msg and "valid keys:" in msg and "d_k" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("text", "suffix", "match"),
    [('{"d_k": "big"}', ".json", "'d_k'.*expected list, got str"),
     ("{not json", ".json", "not valid JSON"), ("x = = 1", ".toml", "not valid TOML"),
     ("d_k: 3", ".yaml", "expected .json or .toml"), ("[1, 2]", ".json", "expected a table")],
)
def test_bad_config_files(tmp_path, text, suffix, match):
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        resolve_config("pavlovian", config_file=path)


def test_bad_scale_missing_file_and_type_mismatch(tmp_path):
    with pytest.raises(ConfigError, match="--scale"):
        resolve_config("pavlovian", "huge")
    with pytest.raises(ConfigError, match="no such file"):
        resolve_config("pavlovian", config_file=tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="'n_trials'.*expected int"):
        merge_config(pv.QUICK, {"n_trials": 2.5})
    with pytest.raises(ConfigError, match="no such module"):
        resolve_config("astrology")


# ------------------------------------------------------------------------ the command


def test_simulate_pavlovian_writes_everything(tmp_path, tiny_pv, capsys):
    out = tmp_path / "run"
    assert main(["simulate", "pavlovian", "--config", str(tiny_pv), "--seed", "3",
                 "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "capacity @ bit error" in printed and "exponent" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "figure.png", "figure.svg", "results.nc", "summary.csv"]
    ds = load_netcdf(out / "results.nc")
    assert ds.attrs["seed"] == 3 and ds.attrs["simulation"] == "pavlovian"
    assert "brainattn_version" in ds.attrs and "created_utc" in ds.attrs
    assert list(ds["d_k"].values) == [16, 32]
    assert {"snr_sim", "snr_theory", "error_power_sim", "error_power_theory"} <= set(ds.data_vars)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg == resolve_config("pavlovian", "quick", tiny_pv, {"seed": 3})
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the written config reproduces the run exactly
    again = tmp_path / "again"
    assert main(["simulate", "pavlovian", "--config", str(out / "config.json"),
                 "--device", "cpu", "--out", str(again)]) == 0
    ds2 = load_netcdf(again / "results.nc")
    np.testing.assert_array_equal(ds["snr_sim"].values, ds2["snr_sim"].values)


def test_simulate_consciousness_small(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("\n".join(
        f"{k} = {json.dumps(v)}" for k, v in TINY_CONSCIOUSNESS.items()) + "\n")
    out = tmp_path / "cs"
    assert main(["simulate", "consciousness", "-c", str(cfg), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert "ood_minus_dense" in capsys.readouterr().out
    ds = load_netcdf(out / "results.nc")
    assert ds.sizes["seed"] == 2 and list(ds["model"].values) == ["dense", "top2"]


def test_existing_output_is_refused_then_overwritten(tmp_path, tiny_pv, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["simulate", "pavlovian", "--config", str(tiny_pv), "--out", str(out)]) == 2
    assert "exists and is not empty" in _one_line_error(capsys)
    assert (out / "keep.txt").exists()
    assert main(["simulate", "pavlovian", "--config", str(tiny_pv), "--out", str(out),
                 "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "results.nc").exists()


def test_bad_config_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"d_k": [0]}))
    out = tmp_path / "run"
    assert main(["simulate", "pavlovian", "--config", str(bad), "--out", str(out)]) == 2
    assert "'d_k'" in _one_line_error(capsys)
    bad.write_text(json.dumps({"k_values": [99]}))
    assert main(["simulate", "consciousness", "--config", str(bad), "--out", str(out)]) == 2
    assert "'k_values'" in _one_line_error(capsys)
    assert main(["simulate", "pavlovian", "--scale", "huge", "--out", str(out)]) == 2
    assert "--scale" in _one_line_error(capsys)
    assert main(["simulate", "pavlovian", "--device", "tpu:9", "--out", str(out)]) == 2
    assert "device" in _one_line_error(capsys)
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]


def test_failure_mid_run_leaves_nothing(tmp_path, tiny_pv, monkeypatch, capsys):
    def boom(ds):
        raise RuntimeError("plot failed")

    from brainattn.report.theory_figures import FIGURES

    monkeypatch.setitem(FIGURES, "pavlovian", boom)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="plot failed"):  # after results.nc was written
        run_simulation("pavlovian", config_file=tiny_pv, device="cpu", out=out,
                       echo=lambda *a: None)
    assert list(tmp_path.iterdir()) == [tiny_pv]  # no output folder, no temporary leftovers


def test_help_lists_semiotics_only_when_present(capsys):
    assert main(["simulate", "--help"]) == 0
    text = capsys.readouterr().out
    assert "pavlovian" in text and "consciousness" in text
    has = importlib.util.find_spec("brainattn.theory.semiotics") is not None
    assert ("semiotics" in text) == has


def test_every_simulation_has_a_registered_figure_and_summary():
    from brainattn.report.theory import SUMMARIES
    from brainattn.report.theory_figures import FIGURES
    from brainattn.theory import SIMULATIONS

    assert list(FIGURES) == list(SUMMARIES) == list(SIMULATIONS)
    for name in SIMULATIONS:  # each module's plot is the registered figure, not a second one
        assert importlib.import_module(f"brainattn.theory.{name}").plot is FIGURES[name]
