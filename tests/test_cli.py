import subprocess
import sys

from brainattn import __version__
from brainattn.cli import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_help_lists_only_existing_verbs(capsys):
    rc = main(["--help"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Usage" in out


def test_unknown_option_is_one_line_error(capsys):
    rc = main(["--no-such-option"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "brainattn", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout
