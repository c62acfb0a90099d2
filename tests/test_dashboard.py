"""The gold dashboard: one self-contained file and a live page, read with delta-rs and DuckDB,
rendered by a real headless Chromium (Debian's): the charts are drawn, not just written."""

import json
import shutil
import subprocess
import threading
import urllib.request

import pytest
from helpers import SAMPLE
from matplotlib.image import imread
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.dashboard import serve

TRUTH = json.loads((SAMPLE / "ground_truth.json").read_text())
CHARTS = ("funnel", "campaigns", "over-time", "fraud-rules", "messages", "throughput")
BAR_BLUE = (0x4C, 0x78, 0xA8)  # the funnel chart's bars


def chromium(*args: str, tmp_path) -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed: run scripts/debian-packages.sh (make test does)")
    done = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000", *args],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def page(sample_lake, tmp_path_factory):
    out = tmp_path_factory.mktemp("dashboard") / "report.html"
    result = CliRunner().invoke(app, ["dashboard", "--lake", sample_lake.lake, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_the_file_is_self_contained_and_holds_the_gold_tables(page):
    html = page.read_text()
    assert " src=" not in html  # plotly.js inlined: the file opens offline
    for campaign in TRUTH["weak_campaigns"]["click_to_cart"] + TRUTH["weak_campaigns"]["click_through"]:
        assert f"<td>{campaign}</td>" in html.split('id="alerts"')[1].split("</table>")[0], campaign
    league = html.split('id="league"')[1].split("</table>")[0]
    assert league.count("<tr>") == 1 + len(TRUTH["campaigns"])  # a header and one row per campaign


def test_headless_chromium_draws_every_chart(page, tmp_path):
    dom = chromium("--dump-dom", page.as_uri(), tmp_path=tmp_path)
    for chart in CHARTS:  # plotly marks a div it has drawn into with js-plotly-plot
        assert f'id="{chart}" class="plotly-graph-div js-plotly-plot"' in dom, chart
    assert dom.count('class="main-svg"') >= len(CHARTS)

    png = tmp_path / "page.png"
    chromium(f"--screenshot={png}", "--window-size=1400,1000", page.as_uri(), tmp_path=tmp_path)
    pixels = (imread(png)[..., :3] * 255).round().astype(int)
    blue = ((abs(pixels - BAR_BLUE)).sum(axis=-1) < 12).sum()
    assert blue > 5_000, f"the funnel's bars are not on the screenshot ({blue} pixels)"


def test_the_live_page_serves_charts_and_reloads_itself(sample_lake, tmp_path):
    server = serve(sample_lake.lake, port=0, refresh=7)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as response:
            html = response.read().decode()
        assert '<meta http-equiv="refresh" content="7">' in html
        assert 'src="/plotly.min.js"' in html and len(html) < 1_000_000  # plotly.js served apart
        dom = chromium("--dump-dom", f"http://127.0.0.1:{port}/", tmp_path=tmp_path)
        for chart in CHARTS:
            assert f'id="{chart}" class="plotly-graph-div js-plotly-plot"' in dom, chart
    finally:
        server.shutdown()
        server.server_close()


def test_a_missing_lake_is_one_line_and_exit_1(tmp_path):
    for command in (["dashboard", "--out", str(tmp_path / "r.html")], ["serve"]):
        result = CliRunner().invoke(app, [*command, "--lake", str(tmp_path / "nope")])
        assert result.exit_code == 1, result.output
        assert "no lake at" in result.output and "Traceback" not in result.output
