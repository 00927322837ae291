"""`stylus-docs report` without a browser: what it reads from a release and what the page says.

The release is two real builds written by the build's writer (tests/report_fixture.py); example images
come from a real HTTP server on loopback. The browser checks are in test_report_browser.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report_fixture import DEAD, FILTERED, ReportRelease, manifest_counts, write_report_release  # noqa: E402

from stylus_docs import cli  # noqa: E402
from stylus_docs.report import ReportOptions, gather, write_report  # noqa: E402
from stylus_docs.report.images import local_image  # noqa: E402


@pytest.fixture(scope="module")
def rel(tmp_path_factory: pytest.TempPathFactory):
    made = write_report_release(tmp_path_factory.mktemp("report"))
    yield made
    made.close()


def _soup(path: Path) -> BeautifulSoup:
    return BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def _loopback(rel: ReportRelease) -> str:
    return rel.image_server.split("//", 1)[1]


@pytest.fixture(scope="module")
def page(rel: ReportRelease, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("page") / "report.html"
    rc = cli.main(["report", "--docs", str(rel.docs), "--out", str(out), "--fetch-examples",
                   "--image-hosts", _loopback(rel)])  # fmt: skip
    assert rc == 0
    return out


def test_gather_reads_counts_diff_dead_letters_removed(rel: ReportRelease) -> None:
    data = gather(rel.docs)
    assert data.build_dir == rel.build_dir
    assert data.counts["filtered"] == FILTERED
    assert (
        data.dead_letter_total == len(DEAD)
        and [d["reason"] for d in data.dead_letters].count("vlm_bad_answer") == 2
    )
    assert data.removed_total == 1 and data.removed[0]["adapter_id"] == "civitai:150@1500"
    # The previous build is found by itself: the newest older build in the same release root.
    assert data.diff is not None and data.diff.previous_id == rel.previous_dir.name
    assert (data.diff.added, data.diff.removed, data.diff.changed) == (rel.added, rel.removed, rel.changed)
    assert data.diff.unchanged == len(data.adapters) - 2
    rendered = [r for rows in data.images.values() for r in rows if r["origin"] == "rendered"]
    assert len(rendered) == 4 and all(r["path"].startswith("rendered/") for r in rendered)


def test_page_counts_equal_the_manifest(rel: ReportRelease, page: Path) -> None:
    soup = _soup(page)
    shown = {el["data-count"]: int(el.get_text()) for el in soup.select("[data-count]")}
    assert shown == manifest_counts(rel.build_dir)
    totals = {el["data-count-total"]: int(el.get_text()) for el in soup.select("[data-count-total]")}
    assert totals["filtered"] == sum(FILTERED.values()) and totals["dead_letter"] == len(DEAD)
    diff = {el["data-diff"]: int(el.get_text()) for el in soup.select("[data-diff]")}
    assert diff == {"added": 1, "removed": 1, "changed": 1, "unchanged": 8}
    assert soup.select_one("#total")["data-rows"] == "10"
    assert len(soup.select("#adapters tbody tr")) == 10
    assert "nothing disappeared" in soup.select_one("#counts").get_text()


def test_page_is_self_contained(page: Path) -> None:
    soup = _soup(page)
    assert not soup.select("script[src], link[rel=stylesheet]")
    srcs = [img["src"] for img in soup.select("img")]
    assert srcs and all(not s.startswith(("http:", "https:", "//", "/")) for s in srcs)
    for src in srcs:
        assert (page.parent / src).is_file(), src
    # 4 plots + 20 fetched example thumbnails + 4 rendered ones.
    assert len(srcs) == 4 + 20 + 4
    assert (page.parent / "report_files" / "categories.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    row = soup.select_one('tr[data-adapter-id="civitai:103@1003"]')
    status = row.select("td")[5]
    assert status.get_text() == "load_failed" and "test adapter" in status["title"]
    fire = soup.select_one('tr[data-adapter-id="civitai:102@1002"]')
    assert [f.get_text() for f in fire.select("figcaption")] == [
        "example",
        "example",
        "without · 7",
        "with · 7",
    ]


def test_examples_not_fetched_are_links_and_hosts_are_enforced(rel: ReportRelease, tmp_path: Path) -> None:
    out = write_report(rel.docs, tmp_path / "a.html")
    soup = _soup(out.html)
    assert len(soup.select("td .thumbs img")) == 4  # rendered only
    links = [a["href"] for a in soup.select("td .thumbs a")]
    assert len(links) == 20 and all(h.startswith(rel.image_server) for h in links)
    # Fetching without allowing the loopback host: nothing is fetched from it.
    out = write_report(rel.docs, tmp_path / "b.html", options=ReportOptions(fetch_examples=True))
    assert out.thumbnails == 4 and out.images_skipped == 20


def test_report_of_the_oldest_build_has_no_previous(rel: ReportRelease, tmp_path: Path) -> None:
    out = tmp_path / "old.html"
    assert (
        cli.main(["report", "--docs", str(rel.docs), "--build", rel.previous_dir.name, "--out", str(out)])
        == 0
    )
    soup = _soup(out)
    assert "No previous build" in soup.select_one("#diff").get_text()
    assert soup.select_one("[data-build-id]")["data-build-id"] == rel.previous_dir.name
    # --previous names the build to diff against explicitly (here: the live build against itself).
    out2 = tmp_path / "self.html"
    assert (
        cli.main(["report", "--docs", str(rel.docs), "--previous", str(rel.build_dir), "--out", str(out2)])
        == 0
    )
    diff = {el["data-diff"]: int(el.get_text()) for el in _soup(out2).select("[data-diff]")}
    assert diff == {"added": 0, "removed": 0, "changed": 0, "unchanged": 10}


def test_eval_results_are_shown(rel: ReportRelease, tmp_path: Path) -> None:
    ev = tmp_path / "eval"
    ev.mkdir()
    rows = [
        {"method": "stylus", "cfg": 6, "metric": "clip", "value": 27.5},
        {"method": "stylus", "cfg": 6, "metric": "fid", "value": 51.25},
        {"method": "base", "cfg": 6, "metric": "clip", "value": 26.0},
        {"method": "base", "cfg": 6, "metric": "fid", "value": "n/a"},  # skipped, not fatal
        "garbage",
    ]
    (ev / "eval.json").write_text(json.dumps(rows))
    from PIL import Image

    Image.new("RGB", (80, 60), (1, 2, 3)).save(ev / "pareto.png")
    (ev / "pareto.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    out = tmp_path / "r.html"
    assert cli.main(["report", "--docs", str(rel.docs), "--out", str(out), "--eval", str(ev)]) == 0
    section = _soup(out).select_one("#eval")
    cells = [[td.get_text() for td in tr.select("td")] for tr in section.select("tbody tr")]
    assert cells == [["base", "6", "26", ""], ["stylus", "6", "27.5", "51.25"]]
    assert section.select_one("img")["src"] == "r_files/eval/pareto.png"
    assert (tmp_path / "r_files" / "eval" / "pareto.svg").is_file()
    # The shape `stylus-docs eval run` writes: an object whose "rows" are the long rows.
    (ev / "eval.json").write_text(json.dumps({"format": "stylus-eval-run.v1", "table": [], "rows": rows[:2]}))
    assert cli.main(["report", "--docs", str(rel.docs), "--out", str(out), "--eval", str(ev)]) == 0
    cells = [[td.get_text() for td in tr.select("td")] for tr in _soup(out).select("#eval tbody tr")]
    assert cells == [["stylus", "6", "27.5", "51.25"]]


def test_rerun_replaces_its_files_and_refuses_foreign_folders(rel: ReportRelease, tmp_path: Path) -> None:
    out = tmp_path / "x.html"
    write_report(rel.docs, out)
    stale = tmp_path / "x_files" / "stale.png"
    stale.write_bytes(b"old")
    write_report(rel.docs, out)
    assert not stale.exists() and (tmp_path / "x_files" / "downloads.png").is_file()
    (tmp_path / "y_files").mkdir()
    (tmp_path / "y_files" / "mine.txt").write_text("keep")
    rc = cli.main(["report", "--docs", str(rel.docs), "--out", str(tmp_path / "y.html")])
    assert rc == 2 and (tmp_path / "y_files" / "mine.txt").read_text() == "keep"


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["report", "--docs", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "release not found" in err[0]
    assert not (tmp_path / "r.html").exists()


def test_local_images_stay_inside_the_build(tmp_path: Path) -> None:
    build = tmp_path / "build"
    (build / "rendered").mkdir(parents=True)
    (build / "rendered" / "a.png").write_bytes(b"png")
    (tmp_path / "secret.png").write_bytes(b"secret")
    os.symlink(tmp_path / "secret.png", build / "rendered" / "link.png")
    assert local_image(build, "rendered/a.png") == b"png"
    assert local_image(build, "../secret.png") is None
    assert local_image(build, str(tmp_path / "secret.png")) is None
    assert local_image(build, "rendered/link.png") is None
    assert local_image(build, "rendered/missing.png") is None
