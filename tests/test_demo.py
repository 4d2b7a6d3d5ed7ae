"""``brainattn demo``: stages run in order and write the synthetic data set with its summary."""

import brainattn.demo as demo
from brainattn.cli import main
from brainattn.data import open_algonauts


def test_demo_quick(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "QUICK_IMAGES", 12)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    text = capsys.readouterr().out
    assert "== synthetic data" in text and "subj01" in text and "NC median" in text
    ds = open_algonauts(out / "data", "subj01")
    assert ds.sizes["image"] == 12
    # a second run refuses to overwrite, unless asked to
    assert main(["demo", "--out", str(out), "--quick"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--quick", "--overwrite"]) == 0


def test_stages_are_a_list_of_named_functions():
    assert [name for name, _ in demo.STAGES][0] == "synthetic data"
    assert all(callable(fn) for _, fn in demo.STAGES)
