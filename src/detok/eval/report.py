"""`detok report RUN [RUN ...]`: one self-contained HTML page for a run, or for several side by side.

The page opens with a headline table: each run's key metrics (tokenizer PSNR / SSIM / rFID, generator FID /
class accuracy / precision / recall, ...), a column per run, each metric with its recipe on one line. Then
one section per run, or per sub-run of a quickstart folder (tokenizer/, sit/, mar/; sub-runs of the same
name in several runs share a section): training curves from `metrics.jsonl` (EMA-smoothed over the faint raw
values, a log axis for positive losses spanning a decade, `val_` keys dashed over their train key, one
colour per run, the generation probe's FID over training), the keys not plotted (per-step random draws as
their mean, disabled losses, constants) in a table, every PNG of the runs enlarged (pixelated) in a column
per run with real training images beside the samples, the config keys that differ between runs, and,
collapsed, every JSON result and the full config. Images are embedded as base64 data URIs and the CSS is
inline, so the single file can be mailed or archived. A small inline script records, on load, how many
images decoded and how wide the page is (`<body data-images-loaded=N data-images-total=M data-page-width=W>`)
so a headless browser can check them.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from detok.io import write_text

REPORT_NAME = "report.html"
ASSETS_DIR = "report_assets"  # beside the page: the real-image grids it draws
RUN_MARKERS = ("config.yaml", "metrics.jsonl")  # a folder holding either is a run
SKIP_DIRS = {"checkpoints", "__pycache__", ASSETS_DIR}  # weights and the report's own files, never shown
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_IMAGE_BYTES = 8 * 2**20  # larger PNGs are listed, not embedded
MAX_IMAGES = 48  # per run; further PNGs are counted, not embedded
MAX_JSON_BYTES = 512 * 2**10  # larger JSON files are listed, not tabulated
MAX_TABLE_ROWS = 200
MAX_INLINE_LIST = 8  # longer lists are summarised as "[N items] ..."
X_KEYS = ("step", "epoch")  # axes, not curves
RANDOM_DRAWS = ("mask_ratio", "tau")  # drawn anew every step (batch means): tabulated, never plotted
DRAW_PREFIXES = ("share_",)  # mllm: each task's share of a batch, drawn every step
VAL_AFFIXES = ("val_", "_val")  # val_loss / loss_val: drawn dashed over `loss`
HIGHER_IS_BETTER = ("psnr", "ssim", "accuracy", "precision", "recall", "score")  # substrings of key names
SMOOTH_POINTS = 15  # a curve of N points gets an EMA spanning N / SMOOTH_POINTS points (none below 2)
LOG_MIN_RATIO = 10.0  # a log y axis for positive values spanning at least this ratio
PLOT_COLS = 4  # subplots per row in one group's figure
PLOT_CELL_INCHES = (3.3, 2.3)
LEGEND_INCHES = 0.35
PLOT_DPI = 90
CONTENT_PX = 1340  # the page's content width (CSS max-width of body): fits a 1400 px window
GRID_GAP_PX = 12
GRID_MAX_PX = 640  # grids are enlarged by an integer factor up to this many pixels on their long side
REAL_PER_CLASS = 4  # real images per class when the run's config does not say (sample.per_class)
REAL_MAX_PER_CLASS = 16
REAL_SCAN_FACTOR = 40  # dataset items read per image wanted, at most, to find every class
BUILT_IN_DATA = ("shapes", "fashion-mnist")  # datasets the report can draw real images of
CAPTIONS = {  # what the PNGs written by detok's verbs show
    "samples.png": "generator samples (EMA weights; one class per row when written by `train generator`)",
    "reconstructions.png": "held-out originals over their reconstructions (EMA weights), row by row; a third row, "
                           "where present, is the bicubic baseline at the latent's size",
}
CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.2em auto;
max-width:1340px;padding:0 12px;color:#222}
h1{font-size:1.5em;margin:.2em 0} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin:1.4em 0 .4em}
h3{margin:1em 0 .3em;font-size:1.1em} h4{margin:.8em 0 .2em} .meta{color:#666}
code,pre{font:12px/1.35 ui-monospace,Menlo,Consolas,monospace}
pre{background:#f6f6f6;padding:.8em;max-height:40em;overflow-y:auto;white-space:pre-wrap;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:.4em 0 1em;max-width:100%} th,td{border:1px solid #ddd;padding:.2em .6em;
text-align:left;vertical-align:top;overflow-wrap:anywhere} th{background:#f3f3f3;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap} td.best{font-weight:700}
table.compare{width:100%} table.compare td.recipe{color:#555;font-size:.9em}
table.compare tr.part th{background:#e4e9f2;font-size:1.05em} .swatch{display:inline-block;width:.8em;height:.8em;
border-radius:2px;margin-right:.3em;vertical-align:baseline}
figure{margin:.3em 0;min-width:0} figure img{max-width:100%;height:auto;border:1px solid #ddd}
figure img.up{image-rendering:pixelated} figcaption{color:#555;font-size:.9em}
.curves{display:flex;flex-wrap:wrap;gap:0 14px;align-items:flex-start} .grids{display:grid;gap:12px;align-items:start;margin-bottom:.6em}
ul.runs{margin:.2em 0;padding-left:1.2em;color:#555} details{margin:.3em 0}
summary{cursor:pointer;color:#333}
"""
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.imagesLoaded = ok;
  document.body.dataset.imagesTotal = imgs.length;
  document.body.dataset.pageWidth = document.documentElement.scrollWidth;
  var s = document.getElementById("image-status");
  if (s) { s.textContent = ok + " of " + imgs.length + " images decoded"; }
});
"""
GridWriter = Callable[..., Path]  # (images (N, 3, H, W) in [-1, 1], labels (N,), path, class names) -> path


# -- discovery -------------------------------------------------------------------------------------
def is_run(path: Path) -> bool:
    """A folder is a run if it holds a resolved config or a metrics log."""
    return any((path / m).is_file() for m in RUN_MARKERS)


def _started(run: Path) -> tuple[float, str]:
    """Sort key: when the run was started (its earliest marker file), then its name."""
    times = [(run / m).stat().st_mtime for m in RUN_MARKERS if (run / m).is_file()]
    return (min(times) if times else math.inf, run.name)


def _own_files(run: Path, pattern: str) -> tuple[list[Path], list[Path]]:
    """Files matching `pattern` in `run` and its non-run subfolders, and the sub-runs found on the way."""
    files, subruns = [], []
    for item in sorted(run.iterdir()):
        if item.is_dir() and item.name not in SKIP_DIRS and not item.name.startswith("."):
            if is_run(item):
                subruns.append(item)
            elif not any(item.glob("*.safetensors")):  # latent caches hold shards, not results
                sub_files, sub_runs = _own_files(item, pattern)
                files += sub_files
                subruns += sub_runs
        elif item.is_file() and item.match(pattern) and item.name != REPORT_NAME:
            files.append(item)
    return files, subruns


def _parts(root: Path) -> dict[str, Path]:
    """{relative name: folder} of the root ("" if it is a run or holds results) and its sub-runs, in run order."""
    own = _own_files(root, "*.png")[0] + _own_files(root, "*.json")[0]
    out = {"": root} if is_run(root) or own else {}
    for sub in sorted(_own_files(root, "*")[1], key=_started):  # quickstart: tokenizer first
        out.update({(sub.relative_to(root) / k).as_posix(): p for k, p in _parts(sub).items()})
    return out


def _labels(roots: Sequence[Path]) -> list[str]:
    """A short unique column name per root: its folder name, with parents or an index where names repeat."""
    full = [r.resolve() for r in roots]
    for depth in (1, 2, 3):
        names = ["/".join(p.parts[-depth:]) for p in full]
        if len(set(names)) == len(names):
            return names
    return [f"{n} #{i + 1}" for i, n in enumerate(names)]


def default_out(runs: Sequence[str | Path]) -> Path:
    """RUN/report.html for one run; report.html in the first run's parent folder for several."""
    first = Path(runs[0])
    return first / REPORT_NAME if len(runs) == 1 else first.resolve().parent / REPORT_NAME


# -- JSON results as tables ------------------------------------------------------------------------
def _fmt(value: Any) -> tuple[str, bool]:
    """(escaped HTML of one cell, is-numeric)."""
    if isinstance(value, bool) or value is None:
        return html.escape(json.dumps(value)), False
    if isinstance(value, float):
        return (f"{value:.5g}" if math.isfinite(value) else str(value)), True
    if isinstance(value, int):
        return str(value), True
    if isinstance(value, list):
        if len(value) <= MAX_INLINE_LIST and all(not isinstance(v, (dict, list)) for v in value):
            return html.escape(json.dumps(value)), False
        return html.escape(f"[{len(value)} items] {json.dumps(value[:3], default=str)[:80]} ..."), False
    if isinstance(value, dict):
        return html.escape(json.dumps(value, default=str)), False
    return f"<code>{html.escape(str(value))}</code>", False


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": leaf}."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _cell(value: Any) -> str:
    text, numeric = _fmt(value)
    return f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>"


def _kv_table(caption: str, items: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th>{_cell(v)}</tr>" for k, v in items.items())
    return f'<h4>{html.escape(caption)}</h4><table class="kv">{rows}</table>'


def _wide_table(caption: str, records: dict[str, dict[str, Any]]) -> str:
    """One row per record, one column per (flattened) field: recipe fields beside the values."""
    flat = {name: _flatten(rec) for name, rec in list(records.items())[:MAX_TABLE_ROWS]}
    columns = list(dict.fromkeys(k for rec in flat.values() for k in rec))
    head = "<tr><th></th>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
    body = "".join(
        f"<tr><th>{html.escape(name)}</th>" + "".join(_cell(rec[c]) if c in rec else "<td></td>" for c in columns)
        + "</tr>"
        for name, rec in flat.items()
    )
    more = f"<p class=meta>{len(records) - MAX_TABLE_ROWS} more rows not shown</p>" if len(records) > MAX_TABLE_ROWS else ""
    return f'<h4>{html.escape(caption)}</h4><table class="wide">{head}{body}</table>{more}'


def _records(value: Any) -> dict[str, dict[str, Any]] | None:
    """A non-empty dict of dicts or list of dicts, as named records; else None."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        return {str(k): v for k, v in value.items()}
    return None


def json_tables(obj: Any, caption: str) -> list[str]:
    """Tables for any JSON value: scalars in a key/value table; families of records as one wide table."""
    records = _records(obj)
    if records is not None:
        return [_wide_table(caption, records)]
    if not isinstance(obj, dict):
        return [_kv_table(caption, {"value": obj})]
    scalars = {k: v for k, v in obj.items() if _records(v) is None and not (isinstance(v, dict) and v)}
    out = [_kv_table(caption, scalars)] if scalars else []
    for k, v in obj.items():
        if k not in scalars:
            out += json_tables(v, f"{caption} / {k}")
    return out


def _read_json(path: Path) -> Any:
    """The JSON value of `path`; ValueError (too large, not JSON) or OSError otherwise."""
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"{path.stat().st_size} bytes")
    return json.loads(path.read_text())


def _json_file(path: Path) -> dict[str, Any]:
    """A JSON object file's content; {} when missing, unreadable or not an object."""
    try:
        value = _read_json(path)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _yaml_file(path: Path) -> dict[str, Any]:
    """A YAML mapping file's content; {} when missing or unreadable."""
    from detok.config import ConfigError, load_yaml

    try:
        return load_yaml(path) if path.is_file() else {}
    except (ConfigError, OSError):
        return {}


def _distinct_json(run: Path) -> list[Path]:
    """The run's JSON files, without those whose every value another file repeats (train_summary.json in summary.json)."""
    files = _own_files(run, "*.json")[0]
    flat = {}
    for f in files:
        try:
            value = _read_json(f)
        except (OSError, ValueError):
            continue  # listed as not shown by the caller
        flat[f] = {(k, json.dumps(v, sort_keys=True, default=str))
                   for k, v in (_flatten(value) if isinstance(value, dict) else {"": value}).items()}
    return [f for i, f in enumerate(files) if f not in flat or not any(
        g != f and flat[f] <= items and (flat[f] != items or files.index(g) < i) for g, items in flat.items())]


# -- headline metrics ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """One headline number: its name, value, how it was computed (one line) and which way is better."""

    name: str
    value: float
    recipe: str
    unit: str = ""
    better: str = ""  # "low", "high" or "" (not ranked)


def _num(value: float) -> str:
    """A number with as many digits as a headline needs."""
    if not math.isfinite(value) or value == 0:
        return str(value) if value else "0"
    a = abs(value)
    if a >= 1000 or a < 0.001:
        return f"{value:.4g}"
    return f"{value:.1f}" if a >= 100 else f"{value:.2f}" if a >= 1 else f"{value:.3f}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _join(*parts: Any) -> str:
    """The non-empty parts, comma separated."""
    return ", ".join(str(p) for p in parts if p not in (None, "", []))


def _reconstruction_metrics(summary: dict[str, Any]) -> list[Metric]:
    """PSNR / SSIM measured at the end of tokenizer training (summary.json "reconstruction") and the bicubic baseline."""
    rec = summary.get("reconstruction")
    if not isinstance(rec, dict):
        return []
    where = _join(f"{rec['n']} held-out images" if "n" in rec else "", f"{rec['weights']} weights"
                  if "weights" in rec else "", "end of training")
    out = [Metric(name, rec[key], where, unit, "high")
           for name, key, unit in (("PSNR", "psnr", " dB"), ("SSIM", "ssim", "")) if _is_number(rec.get(key))]
    bic = rec.get("bicubic")
    if isinstance(bic, dict) and _is_number(bic.get("psnr")):
        out.append(Metric("bicubic baseline PSNR", bic["psnr"], _join(
            f"downsampled to {bic['side']}x{bic['side']} px and back" if "side" in bic else "",
            f"{bic['values']} numbers vs the latent's {bic['latent_values']}" if "values" in bic else "",
            f"{bic['n']} images" if "n" in bic else ""), " dB", "high"))
    return out


def _evaluate_metrics(metrics: dict[str, Any]) -> list[Metric]:
    """What `detok evaluate` merged into metrics.json: a tokenizer's rFID / PSNR / SSIM / LPIPS, a generator's FID ..."""
    out = []
    rec = metrics.get("reconstruction")
    if isinstance(rec, dict):
        r = rec.get("recipe", {}) if isinstance(rec.get("recipe"), dict) else {}
        split = f"{r['split']} " if r.get("split") else ""
        images = _join(f"{r.get('n', rec.get('n', '?'))} {split}images", f"{r['weights']} weights" if "weights" in r else "")
        for name, key, unit, better in (("rFID", "rfid", "", "low"), ("PSNR (evaluate)", "psnr", " dB", "high"),
                                        ("SSIM (evaluate)", "ssim", "", "high"), ("LPIPS", "lpips", "", "low")):
            if _is_number(rec.get(key)):
                where = _join(r.get("feature_net"), images, "vs their originals") if key == "rfid" else images
                out.append(Metric(name, rec[key], where, unit, better))
    gen = metrics.get("generation", metrics if "fid" in metrics else None)
    if isinstance(gen, dict):
        out += _generation_metrics(gen)
    return out


def _generation_metrics(gen: dict[str, Any]) -> list[Metric]:
    """FID and friends at the best guidance scale (and at cfg 1), with feature net, samples, cfg and reference."""
    best = gen["best"] if isinstance(gen.get("best"), dict) else gen  # flat form: one result beside its recipe
    r = gen["recipe"] if isinstance(gen.get("recipe"), dict) else gen
    ref = r.get("reference")
    ref_text = (f"reference {ref.get('path', '?')} (n={ref.get('n', '?')})" if isinstance(ref, dict)
                else f"reference {ref}" if ref else "")
    s = r.get("sampler") if isinstance(r.get("sampler"), dict) else {}
    steps = s.get("sample_steps", s.get("num_sampling_steps", s.get("num_iter", r.get("steps"))))
    sampler = _join(s.get("sampler"), f"{steps} steps" if steps else "")

    def where(res: dict[str, Any]) -> str:
        return _join(r.get("feature_net"), f"{res['n']} samples" if "n" in res else "",
                     f"cfg {res['cfg']:g}" if _is_number(res.get("cfg")) else "", sampler, r.get("weights"))

    out = []
    if _is_number(best.get("fid")):
        out.append(Metric("FID", best["fid"], _join(where(best), ref_text), "", "low"))
    cfg1 = gen.get("cfg1")
    if isinstance(cfg1, dict) and cfg1 != best and _is_number(cfg1.get("fid")):
        out.append(Metric("FID at cfg 1", cfg1["fid"], where(cfg1), "", "low"))
    for name, key in (("class accuracy", "class_accuracy"), ("precision", "precision"), ("recall", "recall"),
                      ("Inception Score", "inception_score"), ("classifier score", "classifier_score")):
        if _is_number(best.get(key)):
            out.append(Metric(name, best[key], where(best), "", "high"))
    return out + _reference_metrics(gen.get("reference_points"), r.get("feature_net"))


def _reference_metrics(ref: Any, feature_net: Any = None) -> list[Metric]:
    """What a sample FID and class accuracy are read against: real val images scored the same way (the FID
    floor at that n, the classifier's accuracy on real images) and chance level. Not ranked."""
    if not isinstance(ref, dict) or not _is_number(ref.get("real_fid")):
        return []
    where = _join(feature_net, f"{ref['real_n']} real val images" if "real_n" in ref else "", "same reference")
    out = [Metric("FID of real images (floor)", ref["real_fid"], where)]
    if _is_number(ref.get("real_class_accuracy")):
        chance = ref.get("chance_class_accuracy")
        out.append(Metric("class accuracy of real images", ref["real_class_accuracy"],
                          _join(where, f"chance {chance:.2f}" if _is_number(chance) else "")))
    return out


def _training_metrics(summary: dict[str, Any]) -> list[Metric]:
    """The final training loss and the training time, from a run's summary.json."""
    out = []
    final = summary.get("final")
    steps = f"step {summary['steps']}" if "steps" in summary else ""
    if isinstance(final, dict) and _is_number(final.get("loss")):
        out.append(Metric("final train loss", final["loss"], _join(steps, "last logged batch"), "", "low"))
    if _is_number(summary.get("seconds")):
        out.append(Metric("training time", summary["seconds"], _join(
            steps, f"{summary['epochs']:.3g} epochs" if _is_number(summary.get("epochs")) else "",
            f"global batch {summary['global_batch_size']}" if "global_batch_size" in summary else "",
            f"{summary['processes']} process(es)" if "processes" in summary else "",
            f"{summary['img_per_s']:.0f} img/s" if _is_number(summary.get("img_per_s")) else ""), " s"))
    return out


def _probe_metrics(run: Path, records: list[dict[str, Any]]) -> list[Metric]:
    """The generation probe's last FID during tokenizer training (metrics.jsonl `probe_fid`)."""
    probes = [r for r in records if _is_number(r.get("probe_fid"))]
    if not probes:
        return []
    p = _yaml_file(run / "config.yaml").get("probe", {})
    p = p if isinstance(p, dict) else {}
    last = probes[-1]
    return [Metric("probe FID (last)", last["probe_fid"], _join(
        f"step {last['step']}", f"{p['generator']} trained {p.get('steps', '?')} steps on {p.get('images', '?')} "
        "images" if "generator" in p else "", f"{p['n_samples']} samples" if "n_samples" in p else "",
        p.get("feature_net"), f"{len(probes)} probes"), "", "low")]


def _overview_metrics(root: Path, parts: dict[str, Path]) -> dict[str, list[Metric]]:
    """Per part, what a quickstart folder's summary.json adds: the class accuracy of the reconstructions, and the
    numbers of sub-runs that have no metrics.json of their own."""
    summary = _json_file(root / "summary.json")
    by_dir = {p.resolve(): name for name, p in parts.items()}
    out: dict[str, list[Metric]] = {}
    tok = summary.get("tokenizer")
    if isinstance(tok, dict) and "tokenizer" in parts:
        acc = tok.get("class_accuracy")
        if isinstance(acc, dict) and _is_number(acc.get("reconstruction")):
            out["tokenizer"] = [Metric("class accuracy of reconstructions", acc["reconstruction"], _join(
                acc.get("classifier"), f"{acc['n']} val images" if "n" in acc else "",
                f"real {acc['real']:.3f}" if _is_number(acc.get("real")) else "",
                f"bicubic {acc['bicubic']:.3f}" if _is_number(acc.get("bicubic")) else ""), "", "high")]
    gens = summary.get("generators")
    for name, g in (gens.items() if isinstance(gens, dict) else ()):
        part = by_dir.get(Path(g.get("run_dir", root / name)).resolve(), name) if isinstance(g, dict) else None
        if part in parts and _is_number(g.get("fid")):
            where = _join(g.get("fid_features"), f"{g['fid_samples']} samples" if "fid_samples" in g else "",
                          f"cfg {g['cfg_scale']:g}" if _is_number(g.get("cfg_scale")) else "")
            out[part] = [Metric("FID", g["fid"], where, "", "low")] + [
                Metric(label, g[key], where, "", "high") for label, key in (
                    ("class accuracy", "class_accuracy"), ("precision", "precision"), ("recall", "recall"))
                if _is_number(g.get(key))] + _reference_metrics(summary.get("reference_points"), g.get("fid_features"))
    return out


def headline(run: Path, records: list[dict[str, Any]], extra: Sequence[Metric] = ()) -> list[Metric]:
    """The key metrics of one run from its summary.json, metrics.json and metrics.jsonl; `extra` (from an
    enclosing quickstart summary) fills in the names the run's own files lack."""
    summary, metrics = _json_file(run / "summary.json"), _json_file(run / "metrics.json")
    out = _reconstruction_metrics(summary) + _evaluate_metrics(metrics) + _probe_metrics(run, records)
    names = {m.name for m in out}
    out += [m for m in extra if m.name not in names]
    return out + [m for m in _training_metrics(summary) if m.name not in names]


def _swatch(i: int) -> str:
    return f'<span class="swatch" style="background:{_colour(i)}"></span>'


def _colour(i: int) -> str:
    """Matplotlib's default cycle (C0, C1, ...), so table swatches match the curves."""
    return ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf")[i % 10]


def headline_table(labels: Sequence[str], metrics: dict[str, dict[str, list[Metric]]]) -> str:
    """One table: a row per (part, metric), a column per run, the recipe on the right (per run where they differ).

    `metrics` is {section title: {run label: metrics}}; with several runs the best value of a ranked metric is bold.
    """
    head = ("<tr><th>metric</th>" + "".join(f"<th>{_swatch(i)}{html.escape(lb)}</th>" for i, lb in enumerate(labels))
            + "<th>recipe</th></tr>")
    rows = []
    for part, by_run in metrics.items():
        names = list(dict.fromkeys(m.name for ms in by_run.values() for m in ms))
        if not names:
            continue
        rows.append(f'<tr class="part"><th colspan="{len(labels) + 2}">{html.escape(part)}</th></tr>')
        for name in names:
            found = {lb: next(m for m in by_run[lb] if m.name == name) for lb in labels
                     if any(m.name == name for m in by_run.get(lb, []))}
            rows.append(f"<tr><th>{html.escape(name)}</th>" + "".join(
                _value_cell(found.get(lb), list(found.values())) for lb in labels) + _recipe_cell(found) + "</tr>")
    if not rows:
        return "<p class=meta>no headline metrics (no summary.json / metrics.json with known results)</p>"
    return f'<table class="compare"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _value_cell(metric: Metric | None, peers: list[Metric]) -> str:
    if metric is None:
        return '<td class="num meta">&ndash;</td>'
    values = [m.value for m in peers]
    best = metric.better and min(values) < max(values) and metric.value == (
        min(values) if metric.better == "low" else max(values))
    return f'<td class="num{" best" if best else ""}">{_num(metric.value)}{html.escape(metric.unit)}</td>'


def _recipe_cell(found: dict[str, Metric]) -> str:
    recipes = {m.recipe for m in found.values()}
    if len(recipes) == 1:
        return f'<td class="recipe">{html.escape(recipes.pop())}</td>'
    return '<td class="recipe">' + "<br>".join(
        f"<b>{html.escape(lb)}</b>: {html.escape(m.recipe)}" for lb, m in found.items()) + "</td>"


# -- curves ----------------------------------------------------------------------------------------
def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl records by step (a resumed run's later record wins); torn lines are skipped.

    Records of one step are merged (a probe hook logs its values in a record of its own at a logged step)."""
    by_step: dict[float, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)):
            old = by_step.get(rec["step"], {})
            by_step[rec["step"]] = {**old, **rec} if set(rec) - set(X_KEYS) - set(old) else rec
    return [by_step[s] for s in sorted(by_step)]


@dataclass(frozen=True)
class PlotGroup:
    """Curves drawn in one figure: which keys, smoothed or not, log axis allowed or not."""

    title: str
    match: Callable[[str], bool]
    smooth: bool  # noisy per-step values: an EMA over the faint raw curve
    log: bool  # a log y axis when every value is positive and they span LOG_MIN_RATIO


PLOT_GROUPS = (  # in page order; a key goes to the first group that matches (the last matches all)
    PlotGroup("generation probe (over training)", lambda k: k.startswith("probe_"), False, False),
    PlotGroup("grad norm", lambda k: k.startswith("grad_norm"), True, True),
    PlotGroup("latent scale (posterior-mean std)", lambda k: k == "latent_mean_std", True, False),
    PlotGroup("learning rate and schedules", lambda k: k == "lr" or k.startswith("lr_") or k == "corruption_strength",
              False, False),
    PlotGroup("throughput", lambda k: k.endswith("_per_s"), True, False),
    PlotGroup("loss terms", lambda k: True, True, True),
)
GROUP_ORDER = ("loss terms",) + tuple(g.title for g in PLOT_GROUPS[:-1])


def _is_draw(key: str) -> bool:
    return key in RANDOM_DRAWS or key.startswith(DRAW_PREFIXES)


def _train_key(key: str) -> str:
    """`loss` for `val_loss` / `loss_val`; the key itself otherwise."""
    prefix, suffix = VAL_AFFIXES
    if key.startswith(prefix):
        return key[len(prefix):]
    return key[: -len(suffix)] if key.endswith(suffix) else key


def _points(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(float(r["step"]), float(r[key])) for r in records if _is_number(r.get(key))]
    return [p[0] for p in pts], [p[1] for p in pts]


@dataclass
class PlotPlan:
    """What the curves of some runs show: per group, the train keys plotted (with their val twin); the rest, and why."""

    groups: dict[str, list[tuple[str, str | None]]]  # group title -> [(key, its val key or None)]
    skipped: dict[str, str]  # key -> why it is not plotted


def plot_plan(series: dict[str, list[dict[str, Any]]]) -> PlotPlan:
    """Sort the numeric keys of `series` ({run label: metrics.jsonl records}) into plotted groups and skipped keys:
    per-step random draws, losses that are 0 at every logged step (disabled) and constants are not plotted."""
    keys = list(dict.fromkeys(k for recs in series.values() for r in recs for k, v in r.items()
                              if k not in X_KEYS and _is_number(v)))
    skipped, plottable = {}, []
    for key in keys:
        per_run = [ys for ys in (_points(recs, key)[1] for recs in series.values()) if ys]
        if _is_draw(key):
            skipped[key] = "random per-step draw: mean (min to max)"
        elif all(v == 0 for ys in per_run for v in ys):
            skipped[key] = "0 at every logged step (disabled)"
        elif all(len(ys) > 1 and min(ys) == max(ys) for ys in per_run):
            skipped[key] = "constant"
        else:
            plottable.append(key)
    groups: dict[str, list[tuple[str, str | None]]] = {}
    for key in plottable:
        base = _train_key(key)
        if base != key and base in plottable:
            continue  # drawn dashed with its train key
        twin = next((k for k in plottable if k != key and _train_key(k) == key), None)
        title = next(g.title for g in PLOT_GROUPS if g.match(key))
        groups.setdefault(title, []).append((key, twin))
    return PlotPlan({t: groups[t] for t in GROUP_ORDER if t in groups}, skipped)


def smooth(values: list[float]) -> list[float]:
    """A debiased EMA spanning len / SMOOTH_POINTS points (TensorBoard's smoothing): noise out, trends kept."""
    span = len(values) / SMOOTH_POINTS
    if span < 2:
        return list(values)
    w = 1 - 2 / (span + 1)
    out, acc, norm = [], 0.0, 0.0
    for v in values:
        acc, norm = w * acc + (1 - w) * v, w * norm + (1 - w)
        out.append(acc / norm)
    return out


def _log_axis(group: PlotGroup, key: str, ys: list[float]) -> bool:
    if not group.log or any(s in key for s in HIGHER_IS_BETTER) or not ys or min(ys) <= 0:
        return False
    return max(ys) / min(ys) >= LOG_MIN_RATIO


def curve_pngs(series: dict[str, list[dict[str, Any]]], plan: PlotPlan,
               order: Sequence[str] | None = None) -> dict[str, bytes]:
    """One PNG per group of `plan`, a subplot per key, a colour per run of `series` (legend: the run labels),
    the val twin dashed; noisy curves EMA-smoothed over their faint raw values. `order` (the page's run labels)
    fixes each run's colour; default: the order of `series`."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg renders the PNG
    from matplotlib.lines import Line2D

    by_title = {g.title: g for g in PLOT_GROUPS}
    colour = {lb: _colour(list(order or series).index(lb)) for lb in series}
    out = {}
    for title, keys in plan.groups.items():
        group = by_title[title]
        cols = min(PLOT_COLS, len(keys))
        rows = math.ceil(len(keys) / cols)
        has_val = any(twin for _, twin in keys)
        legend = len(series) > 1 or has_val
        height = PLOT_CELL_INCHES[1] * rows + (LEGEND_INCHES if legend else 0)
        fig = Figure(figsize=(PLOT_CELL_INCHES[0] * cols, height), dpi=PLOT_DPI)
        for i, (key, twin) in enumerate(keys):
            ax = fig.add_subplot(rows, cols, i + 1)
            every = []
            for lb, records in series.items():
                for k, style in ((key, "-"), (twin, "--")):
                    xs, ys = _points(records, k) if k else ([], [])
                    every += ys
                    if not xs:
                        continue
                    smoothed = smooth(ys) if group.smooth else ys
                    if smoothed != ys:
                        ax.plot(xs, ys, color=colour[lb], lw=0.7, alpha=0.25)
                    ax.plot(xs, smoothed, color=colour[lb], lw=1.4, ls=style, marker="." if len(xs) < 30 else None)
            log = _log_axis(group, key, every)
            ax.ticklabel_format(axis="y", useOffset=False)  # values, not "+1.305e2" offsets
            if log:
                ax.set_yscale("log")
            ax.set_title(f"{key}{' / ' + twin if twin else ''}{' (log)' if log else ''}", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        if legend:
            handles = [Line2D([], [], color=colour[lb], lw=2, label=lb) for lb in series] if len(series) > 1 else []
            if has_val:
                handles += [Line2D([], [], color="#444", lw=1.4, label="train"),
                            Line2D([], [], color="#444", lw=1.4, ls="--", label="val")]
            fig.legend(handles=handles, loc="upper center", ncol=min(8, len(handles)), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 1 - (LEGEND_INCHES / height if legend else 0)))
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        out[title] = buf.getvalue()
    return out


def _skipped_table(series: dict[str, list[dict[str, Any]]], skipped: dict[str, str]) -> str:
    """The keys not plotted: why, and per run their mean (with the range where it varies)."""
    if not skipped:
        return ""
    head = "<tr><th>not plotted</th><th>why</th>" + "".join(f"<th>{html.escape(lb)}</th>" for lb in series) + "</tr>"
    rows = []
    for key, why in skipped.items():
        cells = []
        for records in series.values():
            ys = _points(records, key)[1]
            text = "&ndash;" if not ys else _num(sum(ys) / len(ys)) + (
                f' <span class="meta">({_num(min(ys))} to {_num(max(ys))})</span>' if min(ys) != max(ys) else "")
            cells.append(f'<td class="num">{text}</td>')
        rows.append(f"<tr><th>{html.escape(key)}</th><td>{html.escape(why)}</td>{''.join(cells)}</tr>")
    return f'<table class="skipped">{head}{"".join(rows)}</table>'


# -- images ----------------------------------------------------------------------------------------
def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None if `data` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE):
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def display_width(size: tuple[int, int], column_px: int) -> tuple[int, bool]:
    """(shown width, enlarged): small grids grow by an integer factor (pixelated) up to GRID_MAX_PX on the long
    side and the column's width; grids wider than the column shrink to it."""
    w, h = size
    scale = min(column_px / w, GRID_MAX_PX / max(w, h))
    if scale >= 1:
        return w * int(scale), True
    return min(w, column_px), False


def _figure(data: bytes, caption: str, width: int | None = None, enlarged: bool = False) -> str:
    """An <img> with the PNG as a data URI, `width` px wide (pixelated when `enlarged`), and its caption."""
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    attrs = (f' width="{width}"' if width else "") + (' class="up"' if enlarged else "")
    cap = html.escape(caption)
    return f'<figure><img src="{uri}"{attrs} alt="{cap}"><figcaption>{cap}</figcaption></figure>'


def _class_examples(dataset: Any, per_class: int) -> tuple[Any, Any]:
    """(images (N, 3, H, W), labels (N,)): the first `per_class` items of each class, by class."""
    import torch

    found: dict[int, list[Any]] = {}
    want = dataset.num_classes * per_class
    for i in range(min(len(dataset), want * REAL_SCAN_FACTOR)):
        item = dataset[i]
        label = int(item["label"])
        if len(found.setdefault(label, [])) < per_class:
            found[label].append(item["image"])
            if sum(map(len, found.values())) == want:
                break
    labels = [c for c in sorted(found) for _ in found[c]]
    return torch.stack([x for c in sorted(found) for x in found[c]]), torch.tensor(labels)


def _real_data(run: Path) -> tuple[dict[str, Any] | None, int, str]:
    """(data config dict at the run's image size, images per class, why not) of a generator run: the data its
    tokenizer trained on (the tokenizer run's config.yaml), else the run's own when it read images."""
    cfg = _yaml_file(run / "config.yaml")
    sample = cfg.get("sample") if isinstance(cfg.get("sample"), dict) else {}
    per_class = max(1, min(REAL_MAX_PER_CLASS, int(sample.get("per_class") or REAL_PER_CLASS)))
    tok = cfg.get("tokenizer")
    tok_cfg = _yaml_file(Path(tok) / "config.yaml") if isinstance(tok, str) and tok else {}
    data, size = None, None
    if isinstance(tok_cfg.get("data"), dict):
        data = tok_cfg["data"]
        size = (tok_cfg.get("tokenizer") or {}).get("image_size") if isinstance(tok_cfg.get("tokenizer"), dict) else None
    elif cfg.get("cache"):
        return None, per_class, f"its tokenizer run {tok or '?'} (which names the data) is not available"
    elif isinstance(cfg.get("data"), dict):
        data = cfg["data"]
    if data is None:
        return None, per_class, "config.yaml names no dataset"
    if data.get("name") not in BUILT_IN_DATA:
        return None, per_class, f"data {data.get('name')!r} is not a built-in dataset ({', '.join(BUILT_IN_DATA)})"
    return {**data, "image_size": int(size or data.get("image_size", 32)), "num_workers": 0}, per_class, ""


def real_grid(run: Path, assets: Path, writer: GridWriter, drawn: dict[str, Path]) -> tuple[Path | None, str]:
    """(PNG of real training images, one row per class, in `assets`; why not) for the data of generator run
    `run`. `drawn` caches the grids of this page by file name (runs on the same data share one)."""
    data, per_class, why = _real_data(run)
    if data is None:
        return None, why
    from detok.config import ConfigError, from_dict
    from detok.data.build import DataConfig, build_dataset

    try:
        dcfg = from_dict(DataConfig, data, prefix="data.")
        name = f"real-{dcfg.name}-{dcfg.image_size}px-seed{dcfg.seed}-{per_class}.png"
        if name not in drawn:
            dataset = build_dataset(dcfg, "train")
            images, labels = _class_examples(dataset, per_class)
            drawn[name] = writer(images, labels, assets / name, list(dataset.class_names))
    except (ConfigError, OSError, ValueError) as e:  # FileNotFoundError: Fashion-MNIST files not installed
        return None, f"{data.get('name')} not available ({str(e).splitlines()[0]})"
    return drawn[name], ""


@dataclass
class Page:
    """What the page holds, for the caller's summary; `drawn` caches its real-image grids."""

    runs: list[str]
    sections: list[str]
    images: int = 0
    real_grids: int = 0
    plots: int = 0
    tables: int = 0
    drawn: dict[str, Path] = field(default_factory=dict)

    def stats(self) -> dict[str, Any]:
        return {"runs": self.runs, "sections": self.sections, "images": self.images, "real_grids": self.real_grids,
                "plots": self.plots, "tables": self.tables}


def _distinct_pngs(run: Path) -> tuple[dict[str, Path], list[str]]:
    """({relative name: path} of the run's PNGs, top level first, without byte-identical repeats; the repeats)."""
    files: dict[str, Path] = {}
    seen: dict[str, str] = {}
    repeats = []
    for path in sorted(_own_files(run, "*.png")[0], key=lambda p: (len(p.relative_to(run).parts), p.as_posix())):
        name = path.relative_to(run).as_posix()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen:
            repeats.append(f"{name} (the same image as {seen[digest]})")
        else:
            seen[digest] = name
            files[name] = path
    return files, repeats


def _grids(runs: dict[str, Path], page: Page, assets: Path | None, writer: GridWriter | None) -> str:
    """Every PNG of the runs, a row per file name and a column per run; real images beside the samples."""
    own, parts = {}, []
    for lb, run in runs.items():
        own[lb], repeats = _distinct_pngs(run)
        if repeats:
            who = f"{lb}: " if len(runs) > 1 else ""
            parts.append(f"<p class=meta>not shown again: {html.escape(who + ', '.join(repeats))}</p>")
    names = sorted(dict.fromkeys(n for files in own.values() for n in files), key=lambda n: (n.count("/"), n))
    if len(names) > MAX_IMAGES:
        parts.append(f"<p class=meta>{len(names) - MAX_IMAGES} further PNGs not embedded</p>")
    for name in names[:MAX_IMAGES]:
        cells: list[tuple[str, Path | None]] = [(lb, files.get(name)) for lb, files in own.items()]
        notes = []
        if Path(name).name == "samples.png":
            reals: dict[Path, list[str]] = {}
            for lb, path in cells:
                if path is None:
                    continue
                if writer is None or assets is None:
                    grid, why = None, "not drawn here (`detok report` draws them)"
                else:
                    grid, why = real_grid(runs[lb], assets, writer, page.drawn)
                if grid is None:
                    notes.append(f"{lb}: {why}" if len(runs) > 1 else why)
                else:
                    reals.setdefault(grid, []).append(lb)
            cells += [(f"real training images ({', '.join(lbs)})" if len(runs) > 1 else "real training images", g)
                      for g, lbs in reals.items()]
        column_px = (CONTENT_PX - GRID_GAP_PX * (len(cells) - 1)) // len(cells)
        figures = []
        for lb, path in cells:
            figures.append(_grid_cell(lb, path, column_px, page))
        caption = CAPTIONS.get(Path(name).name, "")
        parts.append(f"<h4>{html.escape(name)}{' <span class=meta>&mdash; ' + html.escape(caption) + '</span>' if caption else ''}</h4>")
        if notes:
            parts.append(f"<p class=meta>real images not shown: {html.escape('; '.join(notes))}</p>")
        parts.append(f'<div class="grids" style="grid-template-columns:repeat({len(cells)},minmax(0,1fr))">'
                     f"{''.join(figures)}</div>")
    return "\n".join(parts)


def _grid_cell(label: str, path: Path | None, column_px: int, page: Page) -> str:
    if path is None:
        return f"<p class=meta>{html.escape(label)}: no such file</p>"
    data = path.read_bytes()
    size = png_size(data)
    if size is None or len(data) > MAX_IMAGE_BYTES:
        return (f"<p class=meta>{html.escape(label)}: {html.escape(path.name)} not embedded ({len(data)} bytes, "
                f"{'too large' if size else 'not a PNG'})</p>")
    width, enlarged = display_width(size, column_px)
    if path.parent.name == ASSETS_DIR:
        page.real_grids += 1
    else:
        page.images += 1
    return _figure(data, f"{label} ({size[0]}x{size[1]} px{f', shown x{width // size[0]}' if enlarged else ''})",
                   width, enlarged)


# -- sections --------------------------------------------------------------------------------------
def _checkpoints(run: Path) -> str:
    metas = sorted((run / "checkpoints").glob("step-*/meta.json"))
    steps = []
    for m in metas:
        try:
            steps.append(f"{m.parent.name} (step {json.loads(m.read_text()).get('step', '?')})")
        except (OSError, json.JSONDecodeError):
            steps.append(m.parent.name)
    return ", ".join(steps)


def _config_diff(runs: dict[str, Path]) -> str:
    """A table of the config keys whose values differ between the runs (the full configs stay collapsed)."""
    configs = {lb: _flatten(_yaml_file(run / "config.yaml")) for lb, run in runs.items()
               if (run / "config.yaml").is_file()}
    if len(configs) < 2:
        return ""
    keys = list(dict.fromkeys(k for cfg in configs.values() for k in cfg))
    differ = [k for k in keys if len({json.dumps(c.get(k, "(absent)"), default=str) for c in configs.values()}) > 1]
    if not differ:
        return "<p class=meta>configs: identical</p>"
    head = "<tr><th>config key</th>" + "".join(f"<th>{html.escape(lb)}</th>" for lb in configs) + "</tr>"
    body = "".join(f"<tr><th>{html.escape(k)}</th>" + "".join(
        _cell(c[k]) if k in c else '<td class="meta">(absent)</td>' for c in configs.values()) + "</tr>"
        for k in differ[:MAX_TABLE_ROWS])
    return f'<h3>config keys that differ</h3><table class="diff">{head}{body}</table>'


def _results(label: str, run: Path, page: Page) -> str:
    """Collapsed: the run's full config and every JSON result (files another repeats are left out)."""
    parts = []
    if (run / "config.yaml").is_file():
        text = html.escape((run / "config.yaml").read_text())
        parts.append(f"<details><summary>{html.escape(label)}: resolved config (config.yaml)</summary>"
                     f"<pre>{text}</pre></details>")
    files = _distinct_json(run)
    tables = []
    for path in files:
        rel = path.relative_to(run).as_posix()
        try:
            tables += json_tables(_read_json(path), rel)
            page.tables += 1
        except (ValueError, OSError) as e:  # JSONDecodeError is a ValueError
            tables.append(f"<p class=meta>{html.escape(rel)}: not shown ({html.escape(str(e))})</p>")
    if tables:
        names = ", ".join(p.relative_to(run).as_posix() for p in files)
        parts.append(f"<details><summary>{html.escape(label)}: all results ({html.escape(names)})</summary>"
                     f"{''.join(tables)}</details>")
    return "\n".join(parts)


def _run_line(label: str, i: int, run: Path, several: bool) -> str:
    cfg = _yaml_file(run / "config.yaml")
    ckpts = _checkpoints(run)
    what = _join(cfg.get("model") if isinstance(cfg.get("model"), str) else "", f"checkpoints: {ckpts}" if ckpts else "")
    name = f"{_swatch(i)}<b>{html.escape(label)}</b> " if several else ""
    return f"<li>{name}<code>{html.escape(str(run.resolve()))}</code>{' &middot; ' + html.escape(what) if what else ''}</li>"


def _title(part: str, runs: dict[str, Path]) -> str:
    """A section's name: the sub-run's name; for the top level, the runs' labels, or "overview" if not a run."""
    if part:
        return part
    return ", ".join(runs) if any(is_run(r) for r in runs.values()) else "overview"


def _section(title: str, runs: dict[str, Path], series: dict[str, list[dict[str, Any]]], labels: list[str],
             page: Page, assets: Path | None, writer: GridWriter | None) -> str:
    """HTML of one part (a run, or the sub-runs of that name) across the runs holding it."""
    page.sections.append(title)
    several = len(labels) > 1
    lines = "".join(_run_line(lb, labels.index(lb), run, several) for lb, run in runs.items())
    parts = [f'<section class="run"><h2>run: {html.escape(title)}</h2><ul class="runs">{lines}</ul>']
    series = {lb: recs for lb, recs in series.items() if recs}
    if series:
        plan = plot_plan(series)
        steps = ", ".join(f"{lb} {len(recs)}" if several else str(len(recs)) for lb, recs in series.items())
        parts.append(f"<h3>training curves <span class=meta>({steps} logged steps)</span></h3>")
        figures = [_figure(data, f"{title}: {group} vs step") for group, data in curve_pngs(series, plan, labels).items()]
        parts.append(f'<div class="curves">{"".join(figures)}</div>')
        page.plots += len(figures)
        parts.append(_skipped_table(series, plan.skipped))
    grids = _grids(runs, page, assets, writer)
    if grids:
        parts.append(f"<h3>images</h3>{grids}")
    parts.append(_config_diff(runs))
    parts += [_results(lb if several else title, run, page) for lb, run in runs.items()]
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"no run folder {root}")
    if not _parts(root):
        raise ValueError(f"{root} is not a run folder (no {' / '.join(RUN_MARKERS)}, results, images or sub-runs)")


def _records_of(run: Path) -> list[dict[str, Any]]:
    return read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []


def render(runs: str | Path | Sequence[str | Path], *, assets: Path | None = None,
           grid_writer: GridWriter | None = None) -> tuple[str, dict[str, Any]]:
    """(HTML text, stats: runs / sections / images / real_grids / plots / tables) for one or several run folders.

    Several runs are compared: one headline table with a column per run, and one section per part (a run, or
    the sub-runs of a quickstart folder by name) with their curves overlaid and their grids in columns. With
    `grid_writer` (detok.runs.sample.save_class_grid) real-image grids are drawn into `assets`.
    """
    roots = [Path(runs)] if isinstance(runs, (str, Path)) else [Path(r) for r in runs]
    if not roots:
        raise ValueError("no run folder given")
    for root in roots:
        _check_root(root)
    labels = _labels(roots)
    by_root = {lb: _parts(root) for lb, root in zip(labels, roots)}
    if all(list(p) == [""] for p in by_root.values()):  # single runs: compared with each other
        names = [""]
    else:  # quickstart folders: sub-runs compared by name, the folders' own summaries last
        overview = not any(is_run(p[""]) for p in by_root.values() if "" in p)
        names = sorted(dict.fromkeys(n for p in by_root.values() for n in p), key=lambda n: overview and n == "")
    parts = {n: {lb: p[n] for lb, p in by_root.items() if n in p} for n in names}
    titles = {n: _title(n, runs) for n, runs in parts.items()}
    records = {n: {lb: _records_of(run) for lb, run in runs.items()} for n, runs in parts.items()}
    extras = {lb: _overview_metrics(root, by_root[lb]) for lb, root in zip(labels, roots)}
    metrics = {titles[n]: {lb: headline(run, records[n][lb], extras[lb].get(n, ())) for lb, run in runs.items()}
               for n, runs in parts.items()}
    page = Page(runs=labels, sections=[])
    sections = "\n".join(_section(titles[n], runs, records[n], labels, page, assets, grid_writer)
                         for n, runs in parts.items())
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    title = "detok report: " + " vs ".join(labels)
    where = " &middot; ".join(f"<code>{html.escape(str(r.resolve()))}</code>" for r in roots)
    page_html = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f"<p class=meta>{'runs' if len(roots) > 1 else 'run'}: {where} &middot; generated {now} &middot; "
        f"sections: {html.escape(', '.join(page.sections))} &middot; <span id=\"image-status\"></span></p>\n"
        f"<h2>headline</h2>\n{headline_table(labels, metrics)}\n{sections}\n<script>{SCRIPT}</script>\n</body></html>\n"
    )
    return page_html, page.stats()


def build_report(runs: str | Path | Sequence[str | Path], out: str | Path | None = None, *,
                 grid_writer: GridWriter | None = None) -> Path:
    """Write the self-contained HTML report of `runs` to `out` (default: `default_out`); returns its path."""
    return write_report_with_stats(runs, out, grid_writer=grid_writer)[0]


def write_report_with_stats(runs: str | Path | Sequence[str | Path], out: str | Path | None = None, *,
                            grid_writer: GridWriter | None = None) -> tuple[Path, dict[str, Any]]:
    """(path, what the page holds: runs, sections, images, real_grids, plots, tables); written atomically.
    Real-image grids (with `grid_writer`) go to report_assets/ beside the page."""
    listed = [runs] if isinstance(runs, (str, Path)) else list(runs)
    path = Path(out) if out else default_out(listed)
    page, stats = render(listed, assets=path.parent / ASSETS_DIR, grid_writer=grid_writer)
    return write_text(path, page), stats
