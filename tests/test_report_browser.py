"""The release report in a real browser: Debian's headless Chromium, driven by playwright.

The page is served by a static HTTP server on loopback (and opened as a file); the test takes a
screenshot, checks that no console error was logged, that every image loaded, that the page fetched
nothing from anywhere but its own folder, that the counts it shows are the manifest's, and that search
and sort work. Skips (with the reason) only where the ``chromium`` binary or playwright is absent;
``.ci/run`` installs Chromium. Set ``STYLUS_REPORT_SCREENSHOT=PATH`` to keep the screenshot.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report_fixture import manifest_counts, serve_directory, write_report_release  # noqa: E402

from stylus_docs.report import ReportOptions, write_report  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# No first-run, sync, component or background traffic: the only requests are the page's own.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
    ),
    pytest.mark.timeout(120),
]

# Images on the page load lazily (a catalogue has thousands); load all of them before checking.
LOAD_ALL_IMAGES = """async () => {
  const imgs = Array.from(document.images);
  for (const img of imgs) img.loading = 'eager';
  await Promise.all(imgs.map(img => img.decode().catch(() => null)));
  return imgs.map(img => ({src: img.getAttribute('src'), width: img.naturalWidth}));
}"""
READ_COUNTS = """() => Object.fromEntries(Array.from(document.querySelectorAll('[data-count]'))
  .map(el => [el.dataset.count, Number(el.textContent)]))"""
VISIBLE_ROWS = """() => Array.from(document.querySelectorAll('#adapters tbody tr'))
  .filter(tr => !tr.hidden).map(tr => tr.dataset.adapterId)"""
DOWNLOADS = """() => Array.from(document.querySelectorAll('#adapters tbody tr'))
  .map(tr => Number(tr.cells[4].dataset.sort))"""


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("browser")
    rel = write_report_release(root)
    try:
        loopback = rel.image_server.split("//", 1)[1]
        result = write_report(
            rel.docs, root / "site" / "report.html",
            options=ReportOptions(fetch_examples=True, image_hosts=(loopback,)),
        )  # fmt: skip
    finally:
        rel.close()
    server, url = serve_directory(result.html.parent)
    yield rel, result, url
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        yield chromium
        chromium.close()


def test_report_in_chromium(report, browser, tmp_path: Path) -> None:
    rel, result, url = report
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
    page.on("request", lambda req: requests.append(req.url))
    page.goto(f"{url}/report.html", wait_until="load")

    images = page.evaluate(LOAD_ALL_IMAGES)
    assert len(images) == 4 + 20 + 4  # plots, fetched examples, rendered with/without pairs
    assert [i["src"] for i in images if i["width"] == 0] == []
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if os.environ.get("STYLUS_REPORT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["STYLUS_REPORT_SCREENSHOT"])

    # The counts the page shows are the manifest's, key for key.
    assert page.evaluate(READ_COUNTS) == manifest_counts(rel.build_dir)
    assert page.locator("[data-diff=added]").inner_text() == "1"
    assert page.locator("[data-diff=changed]").inner_text() == "1"

    # Search: terms are ANDed over title, id, category and base model.
    assert page.locator("#shown").inner_text() == "10"
    page.fill("#search", "dragon")
    assert page.evaluate(VISIBLE_ROWS) == ["civitai:102@1002"]
    assert page.locator("#shown").inner_text() == "1"
    page.fill("#search", "sd 1.5 style")
    assert sorted(page.evaluate(VISIBLE_ROWS)) == ["civitai:104@1004", "civitai:106@1006"]
    page.fill("#search", "")
    assert len(page.evaluate(VISIBLE_ROWS)) == 10

    # Sort: numeric on downloads, ascending then descending; text on title.
    header = page.locator("#adapters th[data-key=downloads]")
    header.click()
    ascending = page.evaluate(DOWNLOADS)
    assert ascending == sorted(ascending) and ascending[0] == 5
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert page.evaluate(DOWNLOADS) == sorted(ascending, reverse=True)
    page.locator("#adapters th[data-key=title]").click()
    titles = page.locator("#adapters tbody tr td:first-child a").all_inner_texts()
    assert titles == sorted(titles, key=str.lower) and titles[0] == "Anime Portrait"

    assert errors == []
    assert requests and all(r.startswith(url + "/") for r in requests), requests
    page.close()


def test_report_opens_from_a_file(report, browser) -> None:
    _, result, _ = report
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(result.html.resolve().as_uri(), wait_until="load")
    images = page.evaluate(LOAD_ALL_IMAGES)
    assert images and all(i["width"] > 0 for i in images)
    assert errors == []
    page.close()
