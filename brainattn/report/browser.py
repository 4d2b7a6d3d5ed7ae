"""Open a report in headless Chromium: console messages, image sizes, a screenshot.

Uses Debian's ``chromium`` (``apt-get install chromium``) through its command line only
(``--dump-dom``, ``--screenshot``, ``--enable-logging=stderr``); no Python browser driver and
no browser download. The page's inline script (see :mod:`brainattn.report.html`) writes the
natural size of every image and any script/image error into attributes of ``<html>`` once it has
loaded; ``--virtual-time-budget`` makes Chromium wait for that before dumping the DOM.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from brainattn.errors import BrainAttnError

#: the one console message the report page itself logs
OWN_MESSAGE = "brainattn report loaded"
_CONSOLE = re.compile(r':CONSOLE[:(\d)]*\]?\s*"(?P<msg>.*)", source: (?P<src>.*)$')


@dataclass
class BrowserResult:
    """What Chromium saw: the DOM after load, console messages, image sizes, page errors."""

    dom: str
    console: list[str] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    loaded: bool = False
    screenshot: Path | None = None

    @property
    def console_errors(self) -> list[str]:
        """Console messages other than the page's own "loaded" line (the page logs nothing else)."""
        return [m for m in self.console if not m.startswith(OWN_MESSAGE)]


def find_chromium() -> str | None:
    """Path of a Chromium binary (``$BRAINATTN_CHROMIUM``, ``/usr/bin/chromium``, PATH)."""
    for cand in (os.environ.get("BRAINATTN_CHROMIUM"), "/usr/bin/chromium",
                 shutil.which("chromium"), shutil.which("chromium-browser")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def _base_args(exe: str, profile: str) -> list[str]:
    args = [exe, "--headless", "--disable-gpu", "--no-first-run", "--disable-extensions",
            "--disable-background-networking", "--disable-sync", f"--user-data-dir={profile}",
            "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000",
            "--hide-scrollbars"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return args


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BrainAttnError(f"chromium did not finish within {timeout:.0f} s") from exc


def open_in_browser(html_path: str | os.PathLike, *, screenshot: str | os.PathLike | None = None,
                    width: int = 1400, height: int = 2400, timeout: float = 120.0) -> BrowserResult:
    """Load ``html_path`` in headless Chromium; optionally save a PNG screenshot.

    Raises :class:`~brainattn.errors.BrainAttnError` when no Chromium is installed.
    """
    exe = find_chromium()
    if exe is None:
        raise BrainAttnError("chromium not found (install it with 'apt-get install chromium' or "
                             "set BRAINATTN_CHROMIUM to its path)")
    url = Path(html_path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="brainattn-chromium-") as profile:
        proc = _run([*_base_args(exe, profile), "--dump-dom", url], timeout)
        res = BrowserResult(dom=proc.stdout)
        for line in proc.stderr.splitlines():
            m = _CONSOLE.search(line)
            if m:
                res.console.append(m.group("msg"))
        if screenshot is not None:
            shot = Path(screenshot).resolve()
            shot.parent.mkdir(parents=True, exist_ok=True)
            proc2 = _run([*_base_args(exe, profile), f"--screenshot={shot}",
                          f"--window-size={width},{height}", url], timeout)
            if not shot.is_file():
                raise BrainAttnError(f"chromium wrote no screenshot ({proc2.stderr[-300:]})")
            res.screenshot = shot
    head = re.search(r"<html[^>]*>", res.dom)
    tag = head.group(0) if head else ""
    sizes = re.search(r'data-img-sizes="([^"]*)"', tag)
    if sizes and sizes.group(1):
        res.image_sizes = [tuple(int(v) for v in s.split("x")) for s in sizes.group(1).split(",")]
    errors = re.search(r'data-errors="([^"]*)"', tag)
    if errors and errors.group(1):
        res.page_errors = errors.group(1).split(" | ")
    res.loaded = 'data-loaded="1"' in tag
    return res
