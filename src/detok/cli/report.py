"""`detok report RUN [RUN ...]`: one self-contained HTML page for a run, or several compared (see detok.eval.report)."""

from __future__ import annotations

import argparse

from detok.cli.common import print_summary

HELP = "one self-contained HTML page for a run, or several side by side: metrics, curves, grids, config"


def add_parser(sub) -> None:
    from detok.eval.report import ASSETS_DIR, REPORT_NAME

    p = sub.add_parser("report", help=HELP, description=HELP + ". Several runs are compared: one metrics table "
                       "with a column per run, curves overlaid, grids in columns (sub-runs of quickstart folders "
                       "by name).")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run folder(s); a quickstart folder gets one section per sub-run")
    p.add_argument("--out", default=None, help=f"output HTML file (default: RUN/{REPORT_NAME} for one run; for "
                   f"several, {REPORT_NAME} in the first run's parent folder); real-image grids go to "
                   f"{ASSETS_DIR}/ beside it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detok.eval.report import write_report_with_stats
    from detok.runs.sample import save_class_grid

    path, stats = write_report_with_stats(args.runs, args.out, grid_writer=save_class_grid)
    print_summary(f"detok report -> {path}", {
        "bytes": path.stat().st_size, "runs": ", ".join(stats["runs"]), "sections": ", ".join(stats["sections"]),
        "images": stats["images"], "real_grids": stats["real_grids"], "plots": stats["plots"],
        "json_files": stats["tables"],
    })
    return 0
