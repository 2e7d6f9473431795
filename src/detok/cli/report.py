"""`detok report RUN`: one self-contained HTML page for a run (see detok.eval.report)."""

from __future__ import annotations

import argparse

from detok.cli.common import print_summary

HELP = "one self-contained HTML page for a run: config, curves, images, metrics"

def add_parser(sub) -> None:
    from detok.eval.report import REPORT_NAME

    p = sub.add_parser("report", help=HELP)
    p.add_argument("run", help="run folder (a quickstart folder gets one section per sub-run)")
    p.add_argument("--out", default=None, help=f"output HTML file (default: RUN/{REPORT_NAME})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detok.eval.report import write_report_with_stats

    path, stats = write_report_with_stats(args.run, args.out)
    print_summary(f"detok report -> {path}", {
        "bytes": path.stat().st_size, "sections": ", ".join(stats["sections"]), "images": stats["images"],
        "plots": stats["plots"], "json_files": stats["tables"],
    })
    return 0
