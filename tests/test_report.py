"""`detok report`: a self-contained HTML page (headline metrics, curves, grids, tables) of one run or several
compared, checked in headless Chromium at 1400 px."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
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
from detok.eval.report import (
    PlotPlan,
    build_report,
    curve_pngs,
    display_width,
    json_tables,
    plot_plan,
    read_metrics,
    render,
    smooth,
    write_report_with_stats,
)
from detok.runs.config import tokenizer_config
from detok.runs.sample import save_class_grid

STEPS = 20
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BROWSER_TIMEOUT_S = 120
PAGE_WIDTH_PX = 1400  # the report must fit a window this wide
EVAL_METRICS = {"fid": 123.456, "n": 64, "feature_net": "inception-random", "weights_sha256": "ab" * 32,
                "cfg": 1.5, "steps": 4,
                "reference_points": {"real_fid": 3.25, "real_n": 64, "real_class_accuracy": 0.93,
                                     "chance_class_accuracy": 0.1}}


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
        self._in_th = self._in_th or tag == "th"

    def handle_endtag(self, tag):
        self._in_th = self._in_th and tag != "th"

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


def test_report_is_self_contained_with_headline_curves_images_and_tables(fake_run):
    path = build_report(fake_run)
    assert path == fake_run / "report.html"
    text = path.read_text()
    page = _parse(text)
    assert not [u for u in page.links if re.match(r"(https?:)?//", u)], "external resources"
    assert "<link" not in text and "@import" not in text
    sizes = {_decode_png(u).size for u in page.images}
    assert {(34, 67), (67, 34)} <= sizes, "both run PNGs are embedded"
    assert (4, 4) not in sizes, "checkpoint folders are skipped"
    # curves: tokenizer = loss terms, grad norm, lr, throughput; generator = loss, lr, throughput
    assert len(page.images) == 2 + 4 + 3
    for caption in ("tokenizer: loss terms vs step", "tokenizer: grad norm vs step",
                    "sit: learning rate and schedules vs step"):
        assert caption in text
    assert "<summary>tokenizer: resolved config (config.yaml)</summary>" in text and "gamma:" in text
    # headline: one table, each metric with its recipe on its row
    assert text.count('<table class="compare">') == 1
    headline = text[text.index('<table class="compare">'):text.index("</table>", text.index('<table class="compare">'))]
    assert re.search(r"<th>PSNR</th><td class=\"num\">21.50 dB</td>", headline)
    assert re.search(r"<th>FID</th><td class=\"num\">123.5</td><td class=\"recipe\">inception-random, 64 samples, "
                     r"cfg 1.5, 4 steps", headline)
    # beside the FID, what it is read against: real images scored the same way, and chance
    assert re.search(r"<th>FID of real images \(floor\)</th><td class=\"num\">3.25</td><td class=\"recipe\">"
                     r"inception-random, 64 real val images, same reference", headline)
    assert re.search(r"<th>class accuracy of real images</th><td class=\"num\">0.930</td>.*chance 0.10", headline)
    # every JSON result, collapsed: summary.json's generators one row each, recipe (cfg) beside value (fid)
    for key in [k for k in EVAL_METRICS if k != "reference_points"] + ["real_fid"]:  # a nested dict: its keys
        assert key in page.headers
    assert "123.46" in text and "ab" * 32 in text
    assert re.search(r"<tr><th>sit</th><td><code>sit_tiny</code></td><td class=\"num\">1.5</td>"
                     r"<td class=\"num\">123.46</td></tr>", text)
    assert text.index("run: tokenizer") < text.index("run: sit") < text.index("run: overview"), \
        "sub-runs in the order they were started, the quickstart summary last"


def _second_run(fake_run: Path) -> Path:
    """A copy of `fake_run` with other numbers: a second run to compare."""
    other = fake_run.parent / "qs2"
    shutil.copytree(fake_run, other)
    (other / "sit" / "metrics.json").write_text(json.dumps({**EVAL_METRICS, "fid": 77.7}))
    return other


def test_two_runs_are_compared_side_by_side(fake_run):
    other = _second_run(fake_run)
    out = fake_run.parent / "compare.html"
    path, stats = write_report_with_stats([fake_run, other], out)
    text = path.read_text()
    assert stats["runs"] == ["qs", "qs2"] and stats["sections"] == ["tokenizer", "sit", "overview"]
    assert text.count('<table class="compare">') == 1, "one metrics table, a column per run"
    assert "<title>detok report: qs vs qs2</title>" in text
    head = _parse(text[text.index('<table class="compare">'):])
    assert head.headers[:4] == ["metric", "qs", "qs2", "recipe"]
    assert re.search(r"<th>FID</th><td class=\"num\">123.5</td><td class=\"num best\">77.70</td>", text), \
        "the better FID in bold"
    assert stats["plots"] == 4 + 3, "curves of the same key overlaid, not drawn per run"
    assert stats["images"] == 4 and text.count("grid-template-columns:repeat(2,") == 2, "grids in columns"
    assert "qs: resolved config (config.yaml)" in text and "qs2: resolved config (config.yaml)" in text


def _keys_plotted(plan: PlotPlan) -> set[str]:
    return {k for keys in plan.groups.values() for pair in keys for k in pair if k}


def test_random_draws_disabled_losses_and_constants_are_not_plotted():
    rng = random.Random(0)
    records = [{"step": s, "loss": 1 / s, "val_loss": 1.2 / s, "perceptual": 0.0, "gan": 0.0 if s < 5 else 0.3,
                "mask_ratio": rng.random(), "tau": rng.random(), "share_t2i": rng.random(), "gamma": 3.0,
                "corruption_strength": min(1.0, 2 - s / 5)} for s in range(1, 11)]
    plan = plot_plan({"a": records})
    assert _keys_plotted(plan) == {"loss", "val_loss", "gan", "corruption_strength"}
    assert ("loss", "val_loss") in plan.groups["loss terms"], "val drawn with its train key"
    assert "corruption_strength" in {k for k, _ in plan.groups["learning rate and schedules"]}, "a schedule"
    assert {k: why.split()[0] for k, why in plan.skipped.items()} == {
        "perceptual": "0", "mask_ratio": "random", "tau": "random", "share_t2i": "random", "gamma": "constant"}
    pngs = curve_pngs({"a": records, "b": records}, plan, ["a", "b"])
    assert list(pngs) == ["loss terms", "learning rate and schedules"]


def test_random_draws_and_disabled_losses_are_tabulated_not_plotted(fake_run):
    tok = fake_run / "tokenizer"
    rows = [{**r, "perceptual": 0.0, "mask_ratio": 0.5 + 0.01 * (r["step"] % 3)} for r in read_metrics(tok / "metrics.jsonl")]
    (tok / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = build_report(fake_run).read_text()
    skipped = text[text.index('<table class="skipped">'):]
    assert "<th>perceptual</th><td>0 at every logged step (disabled)</td>" in skipped
    assert "<th>mask_ratio</th><td>random per-step draw: mean (min to max)</td>" in skipped
    assert "mask_ratio" not in " ".join(_parse(text).images), "no curve of it"


def test_smoothing_keeps_short_curves_and_damps_noise():
    assert smooth([3.0, 1.0, 2.0]) == [3.0, 1.0, 2.0]
    noisy = [1.0 + (0.5 if i % 2 else -0.5) for i in range(300)]
    out = smooth(noisy)
    assert len(out) == 300 and max(abs(v - 1.0) for v in out[50:]) < 0.1


def test_probe_records_merge_and_give_the_fid_over_training(fake_run):
    tok = fake_run / "tokenizer"
    with open(tok / "metrics.jsonl", "a") as f:
        for step, fid in ((10, 150.0), (20, 120.0)):
            f.write(json.dumps({"step": step, "epoch": step / 10, "probe_fid": fid}) + "\n")
    records = read_metrics(tok / "metrics.jsonl")
    assert records[9]["probe_fid"] == 150.0 and "loss" in records[9], "a probe record joins its step's record"
    text = build_report(fake_run).read_text()
    assert "tokenizer: generation probe (over training) vs step" in text
    assert re.search(r"<th>probe FID \(last\)</th><td class=\"num\">120.0</td><td class=\"recipe\">step 20", text)


def test_files_repeating_others_are_not_shown_again(fake_run):
    tok = fake_run / "tokenizer"
    (tok / "train_summary.json").write_text(json.dumps({"steps": STEPS, "final": {"loss": 0.05}}))
    (tok / "class_ceiling").mkdir()
    shutil.copy(tok / "reconstructions.png", tok / "class_ceiling" / "reconstructions.png")
    path, stats = write_report_with_stats(fake_run)
    text = path.read_text()
    assert "tokenizer: all results (summary.json)</summary>" in text and "train_summary.json" not in text
    assert "not shown again: class_ceiling/reconstructions.png (the same image as reconstructions.png)" in text
    assert stats["images"] == 2


def test_real_images_are_drawn_beside_the_samples(tmp_path):
    gen = tmp_path / "gen"
    gen.mkdir()
    save_yaml({"model": "sit_tiny", "data": {"name": "shapes", "image_size": 16}, "sample": {"per_class": 2}},
              gen / "config.yaml")
    _metrics(gen / "metrics.jsonl", ("loss",))
    _png(gen / "samples.png", (67, 34), (30, 30, 200))
    path, stats = write_report_with_stats(gen, grid_writer=save_class_grid)
    real = gen / "report_assets" / "real-shapes-16px-seed0-2.png"
    assert real.is_file() and stats["real_grids"] == 1 and stats["images"] == 1
    text = path.read_text()
    assert "real training images" in text and 'class="grids" style="grid-template-columns:repeat(2,' in text
    assert Image.open(real).height == 10 * (64 + 2) + 2, "one row per class, enlarged to 64 px"
    again = write_report_with_stats(gen, grid_writer=save_class_grid)[1]
    assert again["images"] == 1, "the report's own grids are not taken for the run's"


def test_real_images_are_skipped_with_a_note(fake_run):
    text = build_report(fake_run, grid_writer=save_class_grid).read_text()
    assert "real images not shown: config.yaml names no dataset" in text
    cfg = fake_run / "sit" / "config.yaml"
    cfg.write_text("model: sit_tiny\ndata:\n  name: imagefolder\n  root: /nowhere\n")
    text = build_report(fake_run, grid_writer=save_class_grid).read_text()
    assert "data &#x27;imagefolder&#x27; is not a built-in dataset" in text


def test_display_width_enlarges_small_grids_by_an_integer_factor():
    assert display_width((34, 67), 1340) == (34 * 9, True)
    assert display_width((586, 662), 1340) == (586, False), "already legible: natural size"
    assert display_width((586, 662), 440) == (440, False), "shrunk to its column"


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


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers(dest="verb"))
    return parser.parse_args(["report", *argv])


def test_cli_verb_prints_a_summary(fake_run, tmp_path, capsys):
    out = tmp_path / "elsewhere" / "r.html"
    args = _cli([str(fake_run), "--out", str(out)])
    assert args.func(args) == 0 and args.func is run_report
    printed = capsys.readouterr().out
    assert out.is_file() and str(out) in printed and "images: 2" in printed and "tokenizer" in printed


def test_cli_accepts_several_runs(fake_run, capsys):
    other = _second_run(fake_run)
    args = _cli([str(fake_run), str(other)])
    assert args.func(args) == 0
    out = fake_run.parent / "report.html"
    printed = capsys.readouterr().out
    assert out.is_file() and str(out) in printed and "runs: qs, qs2" in printed
    assert not (fake_run / "report.html").exists(), "several runs: the page goes to the first run's parent"


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


def _headless(browser: str, page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", f"--user-data-dir={profile}",
           f"--window-size={PAGE_WIDTH_PX},1000", *extra, page.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def test_page_renders_in_headless_chromium_at_1400_px(fake_run, tmp_path):
    browser = _browser()
    if browser is None:
        msg = f"no headless browser ({' / '.join(BROWSERS)}) on PATH; install it with `apt-get install -y chromium`"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " (CI must install it)")
        pytest.skip(msg)
    wide = {f"cfg {c}": {f"recipe_field_{i}": f"value-{'x' * 30}-{i}" for i in range(25)} for c in range(3)}
    (fake_run / "sit" / "search.json").write_text(json.dumps({"rows": wide, "path": "/very/" + "long" * 120}))
    path = build_report([fake_run, _second_run(fake_run)], tmp_path / "report.html", grid_writer=save_class_grid)
    opened = tmp_path / "opened.html"  # every <details> open: the collapsed tables must fit too
    opened.write_text(path.read_text().replace("<details>", "<details open>"))
    for page in (path, opened):
        res = _headless(browser, page, tmp_path / "profile", "--dump-dom")
        body = re.search(r"<body[^>]*>", res.stdout)
        assert body, res.stdout[:500]
        attrs = dict(re.findall(r'data-([a-z-]+)="(\d+)"', body.group(0)))
        assert {"images-loaded", "images-total", "page-width"} <= set(attrs), f"the load script did not run: {body}"
        assert int(attrs["images-loaded"]) == int(attrs["images-total"]) == 4 + 7, "4 run PNGs, 7 figures of overlaid curves"
        assert int(attrs["page-width"]) <= PAGE_WIDTH_PX, f"{page.name}: wider than the window"
        dom = _parse(res.stdout)
        assert {"fid", "weights_sha256", "psnr", "ssim", "qs", "qs2"} <= set(dom.headers)
        assert "11 of 11 images decoded" in res.stdout
    shot = tmp_path / "shot.png"
    _headless(browser, path, tmp_path / "profile", f"--screenshot={shot}")
    img = Image.open(shot).convert("L")
    assert img.width == PAGE_WIDTH_PX and img.getbbox() is not None
