"""`--help` tells the truth: every verb's help renders, every printed config default is the real default of
that verb's run config (nested sections included), and model names come from the registry."""

from __future__ import annotations

import ast
import re

import pytest

from detok import registry
from detok.cli.main import build_parser, main
from detok.eval.protocol import EvalConfig
from detok.runs.config import GeneratorRunConfig, TokenizerRunConfig

VERBS = [["quickstart"], ["train", "tokenizer"], ["train", "generator"], ["encode"], ["sample"], ["reconstruct"],
         ["evaluate"], ["fid"], ["bench", "tokenizer"], ["report"], ["convert"], ["train", "mllm"], ["generate"],
         ["caption"], ["edit"]]
CONFIGS = {("train", "tokenizer"): TokenizerRunConfig, ("train", "generator"): GeneratorRunConfig,
           ("evaluate",): EvalConfig}
ROW = re.compile(r"^  ([a-z_][a-z0-9_.]*) = (.+?)(?:   # .*)?$")


def help_text(verb: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([*verb, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_help_renders(verb, capsys):
    assert "usage: detok" in help_text(verb, capsys)


@pytest.mark.parametrize("verb", list(CONFIGS), ids=" ".join)
def test_printed_defaults_are_the_run_config_defaults(verb, capsys):
    text = help_text(list(verb), capsys)
    inst = CONFIGS[verb]()
    rows = [ROW.match(line) for line in text.split("config keys", 1)[1].splitlines()]
    rows = [m for m in rows if m and not m.group(1).startswith("generator.<")]
    assert len(rows) > 10
    for m in rows:
        node = inst
        for part in m.group(1).split("."):
            node = getattr(node, part)
        assert ast.literal_eval(m.group(2)) == node, m.group(0)


def test_generator_help_names_every_registered_model_and_family(capsys):
    text = help_text(["train", "generator"], capsys)
    for name in registry.names("generator"):
        assert name in text
    for fam in registry.families("generator"):
        assert f"  {fam.name}: {fam.summary}" in text and fam.sampling.steps in text
    assert "optim.lr = 0.0002" in text  # the generator recipe's, not the tokenizer's 0.0 / 1e-4


def test_every_option_has_help_text():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = []

    def walk(p, path):
        for action in p._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, child in action.choices.items():
                    walk(child, [*path, name])
            elif action.option_strings and action.help != "==SUPPRESS==" and not action.help:
                missing.append(f"{' '.join(path)} {action.option_strings[0]}")

    for name, child in sub.choices.items():
        walk(child, [name])
    assert not missing, missing


def test_top_level_help_and_a_bad_verb_import_no_model_code():
    """`detok --help` and a mistyped verb build one-line stubs only: torch is never imported (fast answers)."""
    import subprocess
    import sys

    code = ("import sys\nfrom detok.cli.main import main\nfor argv in (['--help'], ['trian']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr
    assert "quickstart" in out.stdout and "invalid choice: 'trian'" in out.stderr
