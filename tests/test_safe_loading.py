"""No detok code path deserialises with code execution: every `torch.load` passes `weights_only=True`, no
`np.load(allow_pickle=True)`, no `yaml.load` / `pickle.load(s)` / plain `pickle.Unpickler` (an allow-list
Unpickler subclass that overrides `find_class` is the one permitted form)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "detok"


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _kw(call: ast.Call, key: str):
    for kw in call.keywords:
        if kw.arg == key:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "not a literal"
    return None


def unsafe_loads(tree: ast.AST) -> list[str]:
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _name(node.func)
            if name == "torch.load" and _kw(node, "weights_only") is not True:
                bad.append(f"line {node.lineno}: torch.load without weights_only=True")
            elif name in ("np.load", "numpy.load") and _kw(node, "allow_pickle") not in (None, False):
                bad.append(f"line {node.lineno}: np.load with allow_pickle")
            elif name in ("yaml.load", "yaml.unsafe_load", "pickle.load", "pickle.loads", "pickle.Unpickler",
                          "dill.load", "cloudpickle.load"):
                bad.append(f"line {node.lineno}: {name}")
        elif isinstance(node, ast.ClassDef):
            bases = {_name(b) for b in node.bases}
            if "pickle.Unpickler" in bases and not any(
                isinstance(f, ast.FunctionDef) and f.name == "find_class" for f in node.body
            ):
                bad.append(f"line {node.lineno}: Unpickler subclass {node.name} without an allow-list find_class")
    return bad


def test_no_unsafe_deserialisation_in_the_package():
    found = {str(p.relative_to(SRC)): unsafe_loads(ast.parse(p.read_text())) for p in SRC.rglob("*.py")}
    assert not {k: v for k, v in found.items() if v}


def test_the_checker_sees_each_unsafe_form():
    code = ("import torch, pickle, yaml, numpy as np\ntorch.load('x')\ntorch.load('x', weights_only=False)\n"
            "np.load('x', allow_pickle=True)\nyaml.load(s)\npickle.loads(b)\nclass U(pickle.Unpickler):\n    pass\n")
    assert len(unsafe_loads(ast.parse(code))) == 6
    assert unsafe_loads(ast.parse("import torch\ntorch.load('x', weights_only=True)\n")) == []
