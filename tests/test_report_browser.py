"""report.html rendered by headless Chromium: every section and thumbnail in the DOM, a screenshot that is not blank.

Skipped when ``chromium`` is not on PATH (CI installs it).
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_helpers import GALLERY_SETS, LEAKED, SHOWN, K, make_run

from memray.report import SECTION_IDS, build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not on PATH (apt-get install chromium)")
TIMEOUT_S = 60
WINDOW = (1280, 4000)


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with a private profile; fail the test (not hang) after TIMEOUT_S."""
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}", *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


class Dom(HTMLParser):
    """Section ids and ``img.thumb`` elements of the DOM Chromium serialises."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.thumbs = 0
        self.broken = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "section":
            self.sections.append(a.get("id", ""))
        if tag == "img" and "thumb" in a.get("class", "").split():
            self.thumbs += 1
            self.broken += not a.get("src", "").startswith("data:image/png;base64,")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_run(tmp_path_factory.mktemp("run"))
    return Path(build_report(str(root), copies_per_set=SHOWN))


def test_dom_has_every_section_and_thumbnail(report: Path, tmp_path: Path) -> None:
    dom = Dom()
    dom.feed(chromium(tmp_path, "--dump-dom", report.as_uri()).stdout)
    assert dom.sections == list(SECTION_IDS)
    assert dom.thumbs == len(GALLERY_SETS) * SHOWN * (1 + K) + LEAKED * 3 and dom.broken == 0


def test_screenshot_is_not_blank(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", report.as_uri())
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert img.shape[:2] == (WINDOW[1], WINDOW[0])
    assert img.std() > 20.0  # text, figures and thumbnails; a blank or error page is nearly uniform
    assert len(np.unique(img.reshape(-1, 3)[::97], axis=0)) > 50  # many colours: figures and images drew
    dark = (img.mean(axis=2) < 100).mean()
    assert 0.002 < dark < 0.5  # some dark text, not a black page
