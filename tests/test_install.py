"""The installed `quantlab` (a normal, non-editable `pip install .`) works from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, results, run_dirs


def installed_script() -> Path:
    script = Path(sys.executable).parent / "quantlab"
    if not script.exists():
        pytest.skip("quantlab is not installed in this environment (run `make test` for the full check)")
    probe = subprocess.run(
        [sys.executable, "-c", "import quantlab, quantlab.conf; print(quantlab.__file__)"],
        cwd="/",
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    if probe.returncode != 0 or probe.stdout.strip().startswith(str(REPO / "quantlab")):
        pytest.skip("quantlab is installed in editable mode or without its configs")
    return script


def test_installed_cli_runs_outside_checkout(tmp_path):
    script = installed_script()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QUANTLAB_OUTPUTS")}

    def installed(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )

    help_out = installed("train", "--help")
    assert help_out.returncode == 0 and "resnet18" in help_out.stdout
    proc = installed("train", "-m", "schedule.epochs=1", "seed=0,1")
    assert proc.returncode == 0, proc.stderr
    runs = run_dirs(tmp_path / "outputs")
    assert len(runs) == 2 and all(results(r)["status"] == "completed" for r in runs)
    # the paper tables ship in the wheel, and the plots need no display
    outputs = str(tmp_path / "outputs")
    for command in ("table", "--paper", "md_t1:cifar10/resnet18"), ("plot", "--kind", "curves"):
        proc = installed(command[0], outputs, *command[1:])
        assert proc.returncode == 0, proc.stderr
    assert "REF (float)" in (tmp_path / "outputs" / "table.md").read_text()
    assert (tmp_path / "outputs" / "curves.png").stat().st_size > 0


LIST_INSTALLED = """
import json, quantlab
from pathlib import Path
root = Path(quantlab.__file__).parent
print(json.dumps(sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in (".py", ".yaml"))))
"""


def test_the_installed_wheel_holds_every_module_and_config():
    """Package discovery (setup.py) must put every module, paper table and config in the wheel: a
    missing one would break only the installed `quantlab`, never the checkout."""
    installed_script()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    listed = subprocess.run(
        [sys.executable, "-c", LIST_INSTALLED], cwd="/", env=env, capture_output=True, text=True, check=True
    )
    installed = set(json.loads(listed.stdout))
    code = {
        str(p.relative_to(REPO / "quantlab"))
        for p in (REPO / "quantlab").rglob("*")
        if p.suffix in (".py", ".yaml")
    }
    configs = {str(Path("conf") / p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")}
    assert configs and code and (code | configs) <= installed, sorted((code | configs) - installed)


def test_every_source_file_is_tracked_by_git():
    """An over-broad .gitignore once hid quantlab/data/ from the repository; never again."""
    import shutil

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    files = [str(p.relative_to(REPO)) for p in (REPO / "quantlab").rglob("*.py")]
    files += [str(p.relative_to(REPO)) for p in (REPO / "conf").rglob("*.yaml")]
    ignored = subprocess.run(["git", "check-ignore", *files], cwd=REPO, capture_output=True, text=True).stdout
    assert ignored.split() == []
