"""`detok <verb>`: the command-line interface."""

from __future__ import annotations

import argparse
import os
import sys

from detok import __version__


def build_parser() -> argparse.ArgumentParser:
    from detok.cli import bench, convert, encode, evaluate, quickstart, reconstruct, report, sample, train

    parser = argparse.ArgumentParser(
        prog="detok",
        description="Denoising visual tokenizers (l-DeTok) and generators on their latents.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `detok VERB --help` for a verb's options; defaults reproduce the paper's setting.",
    )
    parser.add_argument("--version", action="version", version=f"detok {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module in (quickstart, train, encode, sample, reconstruct, evaluate, bench, report, convert):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from detok.cli.common import setup_logging
    from detok.config import ConfigError

    setup_logging()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `key=value` overrides may come after options (argparse stops collecting positionals at an option)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, KeyError, ValueError, RuntimeError) as e:
        if os.environ.get("DETOK_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"detok {args.verb}: error: {msg}\n(set DETOK_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
