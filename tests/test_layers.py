"""The layering contract of DESIGN.md, enforced: no upward import, no cycle between sibling packages.

The contract lives in pyproject.toml ([tool.importlinter]); import-linter reads every import of the package,
including those inside functions.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_layers_contract_is_kept():
    out = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                          "sys.exit(lint_imports_command())"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 kept, 0 broken" in out.stdout


def test_registry_imports_no_detok_module_at_import_time():
    """The bottom layer stays bottom: importing the registry loads none of the model packages."""
    code = ("import sys, detok.registry; "
            "bad = [m for m in sys.modules if m.startswith('detok.') and m not in ('detok.registry',)]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
