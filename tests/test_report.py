"""`detok report`: a self-contained HTML page (config, curves, images, metric tables), checked in headless Chromium."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from detok.cli.report import add_parser as add_report_parser
from detok.cli.report import run as run_report
from detok.config import save_yaml
from detok.eval.report import build_report, json_tables, read_metrics, render
from detok.runs.config import tokenizer_config

STEPS = 20
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BROWSER_TIMEOUT_S = 120
EVAL_METRICS = {"fid": 123.456, "n": 64, "feature_net": "inception-random", "weights_sha256": "ab" * 32,
                "cfg": 1.5, "steps": 4}


def _png(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _metrics(path: Path, keys: tuple[str, ...]) -> None:
    lines = [json.dumps({"step": s, "epoch": s / 10, "lr": 1e-4 * min(1, s / 5), "img_per_s": 30.0 + s,
                         **{k: 1.0 / (s + i) for i, k in enumerate(keys)}}) for s in range(1, STEPS + 1)]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture()
def fake_run(tmp_path) -> Path:
    """A quickstart-shaped folder: a tokenizer sub-run and a generator sub-run with an evaluate metrics.json."""
    root = tmp_path / "qs"
    tok = root / "tokenizer"
    tok.mkdir(parents=True)
    save_yaml(tokenizer_config(None, ["tokenizer_tiny"], []), tok / "config.yaml")
    _metrics(tok / "metrics.jsonl", ("loss", "recon", "kl", "grad_norm_ae"))
    _png(tok / "reconstructions.png", (34, 67), (200, 30, 30))
    (tok / "summary.json").write_text(json.dumps({"steps": STEPS, "final": {"loss": 0.05},
                                                  "reconstruction": {"psnr": 21.5, "ssim": 0.61}}))
    _png(tok / "checkpoints" / "step-00000020" / "junk.png", (4, 4), (0, 0, 0))  # never embedded
    gen = root / "sit"
    gen.mkdir()
    (gen / "config.yaml").write_text("model: sit_tiny\nsample:\n  cfg: 1.5\n")
    _metrics(gen / "metrics.jsonl", ("loss",))
    _png(gen / "samples" / "samples.png", (67, 34), (30, 30, 200))
    (gen / "metrics.json").write_text(json.dumps(EVAL_METRICS))
    (root / "summary.json").write_text(json.dumps({
        "data": "shapes", "generators": {"sit": {"model": "sit_tiny", "cfg": 1.5, "fid": 123.456},
                                         "mar": {"model": "mar_tiny", "cfg": 3.0, "fid": 99.0}}}))
    return root


class _Collect(HTMLParser):
    """Every src / href attribute, every <img> src, every <th> text."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.headers: list[str] = []
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "img":
            self.images.append(a["src"])
        self._in_th = tag == "th"

    def handle_endtag(self, tag):
        self._in_th = False

    def handle_data(self, data):
        if self._in_th and data.strip():
            self.headers.append(data.strip())


def _parse(text: str) -> _Collect:
    p = _Collect()
    p.feed(text)
    return p


def _decode_png(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1], validate=True)))
    img.load()
    assert img.format == "PNG"
    return img


def test_report_is_self_contained_with_curves_images_and_tables(fake_run):
    path = build_report(fake_run)
    assert path == fake_run / "report.html"
    text = path.read_text()
    page = _parse(text)
    assert not [u for u in page.links if re.match(r"(https?:)?//", u)], "external resources"
    assert "<link" not in text and "@import" not in text
    sizes = {_decode_png(u).size for u in page.images}
    assert {(34, 67), (67, 34)} <= sizes, "both run PNGs are embedded"
    assert (4, 4) not in sizes, "checkpoint folders are skipped"
    # curves: tokenizer = loss terms, lr, grad norm, throughput; generator = loss, lr, throughput
    assert len(page.images) == 2 + 4 + 3
    for caption in ("tokenizer: loss terms vs step", "tokenizer: grad norm vs step", "sit: learning rate vs step"):
        assert caption in text
    assert "<details><summary>resolved config (config.yaml)</summary>" in text and "gamma:" in text
    for key in EVAL_METRICS:
        assert key in page.headers
    assert "123.46" in text and "ab" * 32 in text
    # summary.json's generators become one row each, recipe (cfg) beside value (fid)
    assert re.search(r"<tr><th>sit</th><td><code>sit_tiny</code></td><td class=\"num\">1.5</td>"
                     r"<td class=\"num\">123.46</td></tr>", text)
    assert text.index("run: tokenizer") < text.index("run: sit"), "sub-runs in the order they were started"


def test_json_tables_render_any_nesting():
    tables = "".join(json_tables({"a": 1, "nested": {"b": {"c": 2.0}}, "rows": [{"x": 1}, {"x": 2, "y": "z"}],
                                  "empty": {}, "nan": float("nan")}, "m.json"))
    page = _parse(tables)
    assert {"a", "empty", "nan", "b", "c", "x", "y", "0", "1"} <= set(page.headers)
    assert "<h4>m.json / rows</h4>" in tables and "<h4>m.json / nested</h4>" in tables
    assert "".join(json_tables([1, 2, 3], "list.json")).count("<tr>") == 1


def test_read_metrics_skips_torn_lines_and_keeps_the_resumed_record(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1, "loss": 3}\n{"step": 2, "loss": 2}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [(r["step"], r["loss"]) for r in read_metrics(f)] == [(1, 3), (2, 1.5)]


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        render(tmp_path / "nope")
    with pytest.raises(ValueError, match="not a run folder"):
        render(tmp_path)


def test_cli_verb_prints_a_summary(fake_run, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers(dest="verb"))
    out = tmp_path / "elsewhere" / "r.html"
    args = parser.parse_args(["report", str(fake_run), "--out", str(out)])
    assert args.func(args) == 0 and args.func is run_report
    printed = capsys.readouterr().out
    assert out.is_file() and str(out) in printed and "images: 2" in printed and "tokenizer" in printed


def test_report_of_a_real_tiny_tokenizer_run(tmp_path):
    from detok.cli.main import main

    run = tmp_path / "tok"
    assert main(["train", "tokenizer", "--config", "tokenizer_tiny", "--out", str(run)]) == 0
    text = build_report(run).read_text()
    page = _parse(text)
    assert len(page.images) >= 3 and all(_decode_png(u) for u in page.images)
    assert "reconstructions.png" in text and "psnr" in page.headers and "step-00000004" in text


def _browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def test_page_renders_in_headless_chromium(fake_run, tmp_path):
    browser = _browser()
    if browser is None:
        msg = f"no headless browser ({' / '.join(BROWSERS)}) on PATH; install it with `apt-get install -y chromium`"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " (CI must install it)")
        pytest.skip(msg)
    path = build_report(fake_run)
    cmd = [browser, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}",
           "--dump-dom", path.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-2000:]
    body = re.search(r"<body[^>]*>", res.stdout)
    assert body, res.stdout[:500]
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(0))
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    assert loaded and total, f"the load script did not run: {body.group(0)}"
    assert int(loaded.group(1)) == int(total.group(1)) == 9
    dom = _parse(res.stdout)
    assert {"fid", "weights_sha256", "psnr", "ssim"} <= set(dom.headers)
    assert "9 of 9 images decoded" in res.stdout
