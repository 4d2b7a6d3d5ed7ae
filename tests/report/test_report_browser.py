"""The report of a small run rendered in a real headless browser (Debian's chromium).

Checks: the page loads, the console holds no message but the page's own "loaded" line (so no
errors), every <img> has a non-zero natural size, the section headings are in the DOM; the
screenshot is kept beside the report and copied to ``$BRAINATTN_ARTIFACT_DIR`` (default
``.pytest_cache/brainattn-artifacts/`` in the checkout) as a CI artefact.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from brainattn.report.browser import OWN_MESSAGE, find_chromium, open_in_browser

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="chromium is not installed (apt-get install chromium); CI installs it in .ci/run",
)


def _artifact_dir() -> Path:
    env = os.environ.get("BRAINATTN_ARTIFACT_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".pytest_cache" / "brainattn-artifacts"


def test_report_renders_in_headless_chromium(demo_report):
    from PIL import Image

    root, out, html = demo_report
    n_img = len(re.findall(r"<img ", html))
    assert n_img == 8

    shot = root / "report-screenshot.png"  # kept in the run folder
    res = open_in_browser(out, screenshot=shot)
    assert res.loaded, "the page's load handler did not run"
    assert res.console and res.console[0].startswith(OWN_MESSAGE)  # console capture works
    assert res.console_errors == [] and res.page_errors == []
    assert len(res.image_sizes) == n_img
    assert all(w > 0 and h > 0 for w, h in res.image_sizes)
    # the browser decoded each PNG at the size it was rendered with
    declared = [(int(w), int(h)) for w, h in re.findall(r'<img [^>]*width="(\d+)" height="(\d+)"', html)]
    assert res.image_sizes == declared
    for heading in ("Provenance", "Data", "Encoders", "Psychophysics", "Theory"):
        assert f"<h2>{heading}</h2>" in res.dom

    im = np.asarray(Image.open(shot).convert("RGB"))
    assert im.shape[0] > 500 and im.shape[1] > 500
    assert (np.abs(im[5:60, 5:400].astype(int) - [0x20, 0x34, 0x4A]).sum(-1) < 30).mean() > 0.5
    assert im.std() > 20  # not a blank page
    art = _artifact_dir()
    art.mkdir(parents=True, exist_ok=True)
    shutil.copy2(shot, art / "report-screenshot.png")


def test_browser_reports_console_errors(tmp_path):
    """The console check can fail: a page with a script error is caught."""
    page = tmp_path / "bad.html"
    page.write_text("<html><head><script>window.addEventListener('load', function()"
                    "{ notDefined(); });</script></head><body><img alt='x' src='missing.png'>"
                    "</body></html>")
    res = open_in_browser(page)
    assert any("notDefined" in m for m in res.console_errors)
    assert not res.loaded and res.image_sizes == []
