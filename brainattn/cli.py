"""The ``brainattn`` command.

Each capability owns its verbs in its own ``cli`` module exposing ``register(app)``; this file
only assembles them, so verbs that do not exist yet are simply not listed. User errors
(:class:`~brainattn.errors.BrainAttnError`, bad options) print one line ``error: ...`` and exit
with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import signal
import sys
import traceback

import typer

try:  # typer >= 0.20 vendors click; older versions use the click package
    from typer import _click as click
except ImportError:  # pragma: no cover
    import click

from brainattn import __version__
from brainattn.errors import BrainAttnError

# Modules exposing ``register(app)``; a module that is not present is not listed.
# typer's vendored click has no Abort (it raises KeyboardInterrupt); older click has one.
_ABORT = getattr(click.exceptions, "Abort", KeyboardInterrupt)

_VERB_MODULES = [
    "brainattn.data.cli",
    "brainattn.encoders.cli",
    "brainattn.analyses.cli",
    "brainattn.psychophysics.cli",
    "brainattn.theory.cli",
    "brainattn.report.cli",
    "brainattn.demo",
]

app = typer.Typer(
    name="brainattn",
    help="Attention for computational neuroscience: brain encoders, difference scaling, theory.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool):
    if value:
        typer.echo(f"brainattn {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
):
    """brainattn command line."""
    if debug:
        os.environ["BRAINATTN_DEBUG"] = "1"


def _register_all() -> None:
    for mod in _VERB_MODULES:
        try:
            spec = importlib.util.find_spec(mod)
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            continue
        importlib.import_module(mod).register(app)


_register_all()


def _accepted_range(exc) -> str:
    """``; accepted: 0 <= x <= 99`` for an option declared with ``min``/``max``, else ``""``.

    typer's message names only the bound that was crossed ("greater than or equal to 8"); the
    user should see the whole range in the one line.
    """
    param = getattr(exc, "param", None)
    lo, hi = getattr(param, "min", None), getattr(param, "max", None)
    if lo is None and hi is None:
        return ""
    if lo is None:
        return f"; accepted: x <= {hi}"
    if hi is None:
        return f"; accepted: x >= {lo}"
    return f"; accepted: {lo} <= x <= {hi}"


_INTERRUPTED = "error: interrupted (outputs not yet complete were removed; nothing is half-written)"


@contextlib.contextmanager
def _signals(caught: list[int]):
    """Ctrl-C and SIGTERM raise ``KeyboardInterrupt`` (so every ``atomic_*`` block removes its
    temporaries) and are remembered: typer turns a ``KeyboardInterrupt`` into a silent exit
    status 130, and the user should read why the command stopped."""

    def handler(signum, frame):
        caught.append(signum)
        raise KeyboardInterrupt

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave the signals alone
        pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning user errors into ``error: ...`` and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("BRAINATTN_DEBUG") == "1"
    caught: list[int] = []
    try:
        with _signals(caught):
            rv = typer.main.get_command(app).main(args=args, prog_name="brainattn",
                                                  standalone_mode=False)
        if caught:
            print(_INTERRUPTED, file=sys.stderr)
            return 128 + caught[0]
    except BrainAttnError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except click.exceptions.UsageError as exc:
        if debug:
            traceback.print_exc()
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        print(f"error: {exc.format_message()}{_accepted_range(exc)}{hint}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `brainattn ... | head`: the reader went away, not an error of ours
        with contextlib.suppress(Exception):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except OSError as exc:
        # the file system refused (read-only, permission, disk full) somewhere brainattn.io
        # does not see, e.g. an input that cannot be read: one line naming the file
        if debug:
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, _ABORT):
        print(_INTERRUPTED, file=sys.stderr)
        return 128 + (caught[0] if caught else signal.SIGINT)
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
