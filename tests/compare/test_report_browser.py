"""The comparison report in a real headless browser (Chromium through selenium): it renders, the screenshot is not
blank, every image loads, the notes are HTML (no raw Markdown) and the table has a row per variant."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromedriver on PATH (make test "
                                "installs Debian's packages when it runs as root with apt)")


def test_report_renders_in_a_headless_browser(tmp_path: Path) -> None:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    from attnlab.compare import run_compare
    from attnlab.compare.presets import tiny
    from attnlab.data import read_bundled_text

    src = tmp_path / "small.txt"
    src.write_text(read_bundled_text("tinyshakespeare")[:6000])
    cfg = tiny()
    cfg = replace(cfg, variants=["standard", "linear"],
                  base=replace(cfg.base, data=replace(cfg.base.data, source=str(src), cache_dir=str(tmp_path / "c"))))
    out = tmp_path / "cmp"
    run_compare(cfg, out, log=lambda s: None)

    opts = Options()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600"):
        opts.add_argument(a)
    opts.binary_location = CHROMIUM
    driver = webdriver.Chrome(options=opts, service=Service(DRIVER))
    try:
        driver.get((out / "report.html").as_uri())
        images = driver.execute_script("return [...document.images].map(i => [i.complete, i.naturalWidth, i.alt])")
        text = driver.execute_script("return document.body.innerText")
        rows = driver.execute_script("return document.querySelectorAll('table')[0].tBodies[0].rows.length")
        shot = tmp_path / "shot.png"
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert [alt for _, _, alt in images] == ["loss_curves", "final_loss", "cost"]
    assert all(done and width > 100 for done, width, _ in images), images
    assert rows == 2
    assert "`" not in text and "**" not in text and not re.search(r"\]\(", text)  # rendered, not raw Markdown
    assert "Welch" in text and "standard" in text
    import matplotlib.image

    px = matplotlib.image.imread(str(shot))
    assert px.shape[0] > 500 and px.std() > 0.05  # a page with content, not a blank screen
