"""The house plan holds: every module imports on its own (no import cycles, no module that only works
after another was imported), and the CLI imports nothing heavy before a command is chosen."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

MODULES = sorted(
    ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    for p in (REPO / "quantlab").rglob("*.py")
)

# One interpreter imports each module after forgetting every quantlab module imported before it, so
# each import starts from nothing of quantlab (third-party modules such as torch stay loaded: fast).
PROBE = """
import importlib, json, sys, traceback
failed = {}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "quantlab" or m.startswith("quantlab.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        failed[name] = traceback.format_exc(limit=-3)
print(json.dumps(failed))
"""


@pytest.fixture(scope="module")
def import_failures() -> dict[str, str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *MODULES], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_package_has_the_house_plan_layers():
    assert {
        "quantlab.cli",
        "quantlab.errors",
        "quantlab.commands",
        "quantlab.runs",
        "quantlab.engine",
    } <= set(MODULES)
    assert {"quantlab.report", "quantlab.quant", "quantlab.methods", "quantlab.data"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_on_its_own(module, import_failures):
    assert module not in import_failures, import_failures.get(module)


def test_errors_imports_nothing_of_quantlab():
    source = (REPO / "quantlab" / "errors.py").read_text()
    assert "from quantlab" not in source and "import quantlab" not in source


def test_cli_help_imports_no_command():
    code = (
        "import sys, quantlab.cli as c; c.main(['--help']); "
        "print([m for m in sys.modules if m.startswith('quantlab.commands.')])"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr
