"""`graphprune MODEL --report report.html`: one self-contained page, readable offline.

Besides checking the markup, the page is rendered by headless Chromium (no network) to a
screenshot that must have the requested size, not be blank, and show the charts' colours.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import graphprune
from graphprune.htmlreport import render
from models.attention import ATTENTION_BLOCKS
from models.blocks import BLOCKS

KEPT, REMOVED, AFTER = (0x2A, 0x9D, 0x8F), (0xE7, 0x6F, 0x51), (0x26, 0x46, 0x53)
WIDTH, HEIGHT = 1200, 2000


@pytest.fixture(scope="module")
def resnet():
    return graphprune.prune(BLOCKS["resnet_bottleneck"](0), ratio=0.4)


@pytest.fixture(scope="module")
def attention():
    return graphprune.prune(ATTENTION_BLOCKS["mha_postnorm"](0), ratio=0.5)


def test_page_is_self_contained(resnet):
    html = render(resnet.report, resnet.plan)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    lowered = html.lower()
    for needle in ("<script", "http://", "https://", "src=", "<link", "url(", "@import",
                   "<iframe", "<img"):
        assert needle not in lowered, needle
    assert "<style>" in html and html.count("<svg") >= 3


def test_page_shows_summary_groups_frozen_and_plan(resnet):
    r, plan = resnet.report, resnet.plan
    html = render(r, plan)
    assert f"{r.params_before:,} → {r.params_after:,}" in html
    assert r.params_cleaned < r.params_before  # its BatchNorms fold
    assert f"clean-up alone → {r.params_cleaned:,}" in html
    assert f"{r.macs_before:,} → {r.macs_after:,}" in html
    assert f"rel. error {r.fidelity.relative_error:.3g}" in html
    assert f"{r.groups_pruned} of {r.groups_found} pruned" in html
    for g in plan.groups:
        assert g.key in html
        assert f"{len(g.keep)} / {g.size} kept, {g.size - len(g.keep)} removed" in html
    assert "Frozen groups (1)" in html and "is a graph input or output" in html
    assert "the plan as JSON" in html and '&quot;criterion&quot;: &quot;l2&quot;' in html
    for stage in r.seconds:
        assert f">{stage}</text>" in html


def test_attention_heads_and_frozen_norms(attention):
    html = render(attention.report, attention.plan)
    assert "attn.context:1" in html and "2 / 4 kept, 2 removed (50%)" in html
    assert "normalizes over axis 2" in html


def test_report_and_plan_as_dicts_render_the_same(resnet):
    as_objects = render(resnet.report, resnet.plan)
    as_dicts = render(json.loads(json.dumps(resnet.report.to_dict(), default=str)),
                      json.loads(resnet.plan.to_json()))
    assert as_dicts == as_objects


def test_latency_and_flops_bars_when_the_report_has_them(resnet):
    data = resnet.report.to_dict()
    plain = render(data, resnet.plan)
    assert "Size and compute" in plain and "Latency" not in plain
    data = dict(data, latency={"before_ms": 12.5, "after_ms": 7.25}, flops_before=4e9,
                flops_after=2e9)
    html = render(data, resnet.plan)
    assert "Size, compute and latency" in html
    assert ">Latency (ms)</text>" in html and "12.5" in html and "×0.580" in html
    assert ">FLOPs</text>" in html and "FLOPs (2 × MACs)" not in html


def test_text_from_the_model_is_escaped(resnet):
    data = resnet.report.to_dict()
    data["frozen"] = [["<b>x</b>:1", "op '<script>alert(1)</script>' has no rule"]]
    html = render(data, None)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "No plan was given" in html


def test_cli_writes_html_for_html_paths_and_json_otherwise(tmp_path):
    model = tmp_path / "net.onnx"
    onnx.save(BLOCKS["resnet_bottleneck"](0), model)
    for name in ("report.html", "report.json"):
        proc = subprocess.run([sys.executable, "-m", "graphprune.cli", str(model), "-q",
                               "-o", str(tmp_path / "out.onnx"), "--round-to", "8",
                               "--report", str(tmp_path / name)], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert json.loads((tmp_path / "report.json").read_text())["groups_pruned"] == 9


# --- rendered by a real browser ---------------------------------------------------------------

def _chromium() -> str | None:
    for name in ("chromium", "chromium-headless-shell", "headless_shell", "chromium-browser",
                 "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    for path in ("/usr/lib/chromium/chromium", "/usr/lib/chromium/headless_shell",
                 "/usr/lib/chromium-headless-shell/chromium-headless-shell"):
        if Path(path).is_file():
            return path
    return None


def _decode_png(path: Path) -> np.ndarray:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except ImportError:
        pass
    try:
        import matplotlib.image as mpimg
    except ImportError:
        pytest.skip("decoding the screenshot needs Pillow or matplotlib")
    img = mpimg.imread(str(path))
    return (np.asarray(img)[..., :3] * 255).round().astype(np.uint8)


def _pixels_near(img: np.ndarray, rgb, tol: int = 4) -> int:
    return int(np.sum(np.all(np.abs(img.astype(int) - np.array(rgb)) <= tol, axis=-1)))


def test_headless_chromium_renders_the_page(attention, resnet, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; "
                    "scripts/test.sh installs it)")
    page = tmp_path / "report.html"
    page.write_text(render(resnet.report, resnet.plan))
    shot = tmp_path / "out.png"
    cmd = [browser, "--headless", "--disable-gpu", "--no-sandbox",
           f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}",
           # no network: every resource must be inline
           "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--disable-background-networking",
           "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
           page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    img = _decode_png(shot)
    assert img.shape == (HEIGHT, WIDTH, 3)
    assert float(img.std()) > 20, "the screenshot is blank"
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50
    # the charts were drawn: kept/removed bars and the after bars
    assert _pixels_near(img, KEPT) > 2000
    assert _pixels_near(img, REMOVED) > 1000
    assert _pixels_near(img, AFTER) > 1000
    # text in the header band (dark pixels on the light background)
    assert np.sum(img[:80].max(axis=-1) < 80) > 200


def test_empty_outputs_show_as_not_compared(resnet):
    from dataclasses import replace

    report = replace(resnet.report, fidelity=replace(resnet.report.fidelity, elements=0))
    html = render(report, resnet.plan)
    assert "not compared" in html and "rel. error" not in html
