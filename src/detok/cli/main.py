"""`detok <verb>`: the command-line interface, and its one error boundary.

Every known failure (a bad config key or value, a missing or unreadable file, a checkpoint that is not plain
tensors, a full disk, a bad image) ends in ONE line on stderr, `detok VERB: error: ...`, exit status 2; the
traceback is shown with `--debug` or DETOK_DEBUG=1. Unknown exceptions keep their traceback (they are bugs).
"""

from __future__ import annotations

import argparse
import os
import sys

from detok import __version__

VERBS = ("quickstart", "train", "encode", "sample", "reconstruct", "evaluate", "fid", "bench", "report",
         "convert")
MLLM_VERBS = ("generate", "caption", "edit")  # the multimodal LM's verbs (detok.cli.mllm)


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The `detok` parser. Only `verb`'s sub-parser is built in full (its options come from the model configs
    and the registry, which import torch); every other verb gets a one-line stub from its module's HELP, so
    `detok --help` and a mistyped verb answer without importing any model code. None builds every verb."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="detok",
        description="Denoising visual tokenizers (l-DeTok) and generators on their latents.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `detok VERB --help` for a verb's options; defaults reproduce the paper's setting.\n"
               "Errors are one line; --debug (or DETOK_DEBUG=1) shows the traceback.",
    )
    parser.add_argument("--version", action="version", version=f"detok {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    everything = verb is None
    for name in VERBS:
        module = importlib.import_module(f"detok.cli.{name}")
        if everything or name == verb:
            module.add_parser(sub)
        else:
            sub.add_parser(name, help=module.HELP)
    mllm = importlib.import_module("detok.cli.mllm")
    for name in MLLM_VERBS:
        if everything or name == verb:
            getattr(mllm, f"add_{name}_parser")(sub)
        else:
            sub.add_parser(name, help=getattr(mllm, f"{name.upper()}_HELP"))
    return parser


def requested_verb(argv: list[str]) -> str:
    """The verb named in argv (the first argument that is one), or "" when there is none."""
    known = set(VERBS) | set(MLLM_VERBS)
    return next((a for a in argv if a in known), "")


def known_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean bad input or environment (reported in one line), not a bug."""
    import pickle

    import yaml

    from detok.config import ConfigError
    from detok.io import CheckpointError, DiskFullError

    errors: list[type[BaseException]] = [ConfigError, CheckpointError, DiskFullError, FileNotFoundError,
                                         KeyError, ValueError, RuntimeError, OSError, yaml.YAMLError,
                                         pickle.UnpicklingError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # older safetensors
        pass
    return tuple(errors)


def one_line(e: BaseException) -> str:
    """The message of `e` as one line: KeyError's quotes dropped, OSError's file named, whitespace folded."""
    if isinstance(e, KeyError) and e.args:
        text = str(e.args[0])
    elif isinstance(e, OSError) and e.filename and e.strerror:
        text = f"{e.strerror}: {e.filename}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    from detok.cli.common import setup_logging

    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(os.environ.get("DETOK_DEBUG")) or "--debug" in argv
    parser = build_parser(requested_verb(argv))
    args, extra = parser.parse_known_args(argv)
    # `key=value` overrides may come after options (argparse stops collecting positionals at an option)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        args.func(args)
    except known_errors() as e:
        if debug:
            raise
        print(f"detok {args.verb}: error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
