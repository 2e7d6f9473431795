"""`detok report RUN`: one self-contained HTML page for a run folder.

The page holds the resolved config, loss curves drawn from `metrics.jsonl`, every PNG of the run
(samples, reconstruction grids) and a table for every JSON result (`summary.json`, `metrics.json`,
...). Images are embedded as base64 data URIs and the CSS is inline, so the single file can be
mailed or archived. A folder whose subfolders are runs (a quickstart folder: tokenizer/, sit/,
mar/) gets one section per sub-run. A small inline script records, on load, how many images
decoded (`<body data-images-loaded=N data-images-total=M>`) so a headless browser can check them.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from detok.io import write_text

REPORT_NAME = "report.html"
RUN_MARKERS = ("config.yaml", "metrics.jsonl")  # a folder holding either is a run
SKIP_DIRS = {"checkpoints", "__pycache__"}  # weights, never shown
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_IMAGE_BYTES = 8 * 2**20  # larger PNGs are listed, not embedded
MAX_IMAGES = 48  # per run section; further PNGs are counted, not embedded
MAX_JSON_BYTES = 512 * 2**10  # larger JSON files are listed, not tabulated
MAX_TABLE_ROWS = 200
MAX_INLINE_LIST = 8  # longer lists are summarised as "[N items] ..."
X_KEYS = ("step", "epoch")  # axes, not curves
PLOT_GROUPS = (  # (title, predicate on a metric key); the first match wins, the rest are "loss terms"
    ("learning rate", lambda k: k == "lr" or k.startswith("lr_")),
    ("grad norm", lambda k: k.startswith("grad_norm")),
    ("throughput", lambda k: k.endswith("_per_s")),
)
DEFAULT_GROUP = "loss terms"
PLOT_COLS = 3  # subplots per row in one group's figure
PLOT_CELL_INCHES = (3.6, 2.4)
PLOT_DPI = 90
DISPLAY_PX = 384  # small grids are shown up to this many pixels on their long side ...
MAX_UPSCALE = 4  # ... by an integer factor at most this, pixelated (no blur)
CAPTIONS = {  # what the PNGs written by detok's verbs show
    "samples.png": "generator samples (EMA weights; one class per row when written by `train generator`)",
    "reconstructions.png": "held-out originals (odd rows) over their reconstructions (even rows), EMA weights",
}
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
h3{margin-bottom:.3em} .meta{color:#666} code,pre{font:12px/1.35 ui-monospace,Menlo,Consolas,monospace}
pre{background:#f6f6f6;padding:.8em;overflow:auto;max-height:40em}
table{border-collapse:collapse;margin:.4em 0 1em} th,td{border:1px solid #ddd;padding:.2em .6em;
text-align:left;vertical-align:top} th{background:#f0f0f0} td.num{text-align:right;font-variant-numeric:tabular-nums}
td code{word-break:break-all} figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figure img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd} figcaption{color:#555;font-size:.9em}
section.run{margin-left:0} section.run section.run{margin-left:1em}
"""
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.imagesLoaded = ok;
  document.body.dataset.imagesTotal = imgs.length;
  var s = document.getElementById("image-status");
  if (s) { s.textContent = ok + " of " + imgs.length + " images decoded"; }
});
"""


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


# -- curves and images -----------------------------------------------------------------------------
def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl records by step (a resumed run's later record wins); torn lines are skipped."""
    by_step: dict[float, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)):
            by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


def _group(key: str) -> str:
    return next((title for title, match in PLOT_GROUPS if match(key)), DEFAULT_GROUP)


def curve_pngs(records: list[dict[str, Any]]) -> dict[str, bytes]:
    """One PNG per group of numeric keys (loss terms, learning rate, grad norm, ...), a subplot per key."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg renders the PNG

    keys = list(dict.fromkeys(
        k for r in records for k, v in r.items()
        if k not in X_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
    ))
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(_group(key), []).append(key)
    out = {}
    for title in sorted(groups, key=lambda t: t != DEFAULT_GROUP):
        names = groups[title]
        cols = min(PLOT_COLS, len(names))
        rows = math.ceil(len(names) / cols)
        fig = Figure(figsize=(PLOT_CELL_INCHES[0] * cols, PLOT_CELL_INCHES[1] * rows), dpi=PLOT_DPI)
        for i, key in enumerate(names):
            ax = fig.add_subplot(rows, cols, i + 1)
            pts = [(r["step"], float(r[key])) for r in records if isinstance(r.get(key), (int, float))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2, marker="." if len(pts) < 30 else None)
            ax.set_title(key, fontsize=10)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        out[title] = buf.getvalue()
    return out


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None if `data` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE):
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _figure(data: bytes, caption: str, size: tuple[int, int] | None = None) -> str:
    """An <img> with the PNG as a data URI; small images (`size` given) are upscaled by an integer factor."""
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    width = ""
    if size and max(size) > 0:
        width = f' width="{size[0] * max(1, min(MAX_UPSCALE, DISPLAY_PX // max(size)))}"'
    cap = html.escape(caption)
    return f'<figure><img src="{uri}"{width} alt="{cap}"><figcaption>{cap}</figcaption></figure>'


# -- sections --------------------------------------------------------------------------------------
def _checkpoints(run: Path) -> str:
    metas = sorted((run / "checkpoints").glob("step-*/meta.json"))
    steps = []
    for m in metas:
        try:
            steps.append(f"{m.parent.name} (step {json.loads(m.read_text()).get('step', '?')})")
        except (OSError, json.JSONDecodeError):
            steps.append(m.parent.name)
    return f"<p class=meta>checkpoints: {html.escape(', '.join(steps))}</p>" if steps else ""


def _section(run: Path, root: Path, depth: int, stats: dict[str, Any]) -> str:
    """HTML of one run (and, nested, its sub-runs)."""
    name = run.resolve().name if run == root else run.relative_to(root).as_posix()
    level = min(2 + depth, 4)
    parts = [f'<section class="run"><h{level}>run: {html.escape(name)}</h{level}>', _checkpoints(run)]
    stats["sections"].append(name)
    if (run / "config.yaml").is_file():
        text = html.escape((run / "config.yaml").read_text())
        parts.append(f"<details><summary>resolved config (config.yaml)</summary><pre>{text}</pre></details>")
    if (run / "metrics.jsonl").is_file():
        records = read_metrics(run / "metrics.jsonl")
        if records:
            parts.append(f"<h{level + 1}>training curves ({len(records)} logged steps)</h{level + 1}>")
            for title, data in curve_pngs(records).items():
                parts.append(_figure(data, f"{name}: {title} vs step"))
                stats["plots"] += 1
    pngs, subruns = _own_files(run, "*.png")
    if pngs:
        parts.append(f"<h{level + 1}>images</h{level + 1}>")
    if len(pngs) > MAX_IMAGES:
        parts.append(f"<p class=meta>{len(pngs) - MAX_IMAGES} further PNGs not embedded</p>")
    for path in pngs[:MAX_IMAGES]:
        rel = path.relative_to(root).as_posix()
        data = path.read_bytes()
        size = png_size(data)
        if size is None or len(data) > MAX_IMAGE_BYTES:
            parts.append(f"<p class=meta>{html.escape(rel)}: not embedded ({len(data)} bytes, "
                         f"{'too large' if size else 'not a PNG'})</p>")
            continue
        note = CAPTIONS.get(path.name, "")
        parts.append(_figure(data, f"{rel} ({size[0]}x{size[1]} px){': ' + note if note else ''}", size))
        stats["images"] += 1
    jsons, _ = _own_files(run, "*.json")
    if jsons:
        parts.append(f"<h{level + 1}>results</h{level + 1}>")
    for path in jsons:
        rel = path.relative_to(root).as_posix()
        try:
            if path.stat().st_size > MAX_JSON_BYTES:
                raise ValueError(f"{path.stat().st_size} bytes")
            parts += json_tables(json.loads(path.read_text()), rel)
            stats["tables"] += 1
        except (ValueError, OSError) as e:  # JSONDecodeError is a ValueError
            parts.append(f"<p class=meta>{html.escape(rel)}: not shown ({html.escape(str(e))})</p>")
    for sub in sorted(subruns, key=_started):  # in the order they were run (quickstart: tokenizer first)
        parts.append(_section(sub, root, depth + 1, stats))
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def render(run_dir: str | Path) -> tuple[str, dict[str, Any]]:
    """(HTML text, stats: sections / images / plots / tables) for the run folder `run_dir`."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no run folder {root}")
    pngs, subruns = _own_files(root, "*.png")
    jsons, _ = _own_files(root, "*.json")
    if not (is_run(root) or subruns or pngs or jsons):
        raise ValueError(f"{root} is not a run folder (no {' / '.join(RUN_MARKERS)}, results, images or sub-runs)")
    stats: dict[str, Any] = {"sections": [], "images": 0, "plots": 0, "tables": 0}
    body = _section(root, root, 0, stats)
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    title = f"detok report: {root.resolve().name}"
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f"<p class=meta>run: <code>{html.escape(str(root.resolve()))}</code> &middot; generated {now} &middot; "
        f"sections: {html.escape(', '.join(stats['sections']))} &middot; <span id=\"image-status\"></span></p>\n"
        f"{body}\n<script>{SCRIPT}</script>\n</body></html>\n"
    )
    return page, stats


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the self-contained HTML report of `run_dir` to `out` (default RUN/report.html); returns its path."""
    return write_report_with_stats(run_dir, out)[0]


def write_report_with_stats(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """(path, what the page holds: sections, images, plots, tables); written atomically."""
    page, stats = render(run_dir)
    path = Path(out) if out else Path(run_dir) / REPORT_NAME
    return write_text(path, page), stats
