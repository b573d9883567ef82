"""Contributor tooling: the commit-msg hook's subject rule and the pre-commit config that runs it and ruff."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "check_commit_subject.py"


@pytest.fixture(scope="module")
def hook():
    spec = importlib.util.spec_from_file_location("check_commit_subject", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("message, ok", [
    ("Split test_robustness by subject\n\nThe why goes here.\n", True),
    ("x" * 72 + "\n", True),
    ("x" * 73 + "\n", False),
    ("\n# Please enter the commit message\n", False),
    ("# a git comment first, longer than seventy-two characters ........................\nShort subject\n", True),
])
def test_subject_rule(hook, message, ok):
    assert (hook.problem(message) is None) == ok


def test_the_hook_exits_1_with_one_line(tmp_path):
    msg = tmp_path / "COMMIT_EDITMSG"
    msg.write_text("y" * 80 + "\n\nbody\n")
    r = subprocess.run([sys.executable, str(SCRIPT), str(msg)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: commit subject is 80 characters, at most 72")
    msg.write_text("Fix a thing\n")
    assert subprocess.run([sys.executable, str(SCRIPT), str(msg)]).returncode == 0


def test_pre_commit_config_runs_ruff_and_the_hook_locally():
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    hooks = {h["id"]: h for repo in config["repos"] if repo["repo"] == "local" for h in repo["hooks"]}
    assert hooks["ruff"]["entry"] == ".venv/bin/python -m ruff check" and hooks["ruff"]["language"] == "system"
    assert hooks["commit-subject"]["stages"] == ["commit-msg"] and str(SCRIPT.relative_to(REPO)) in \
        hooks["commit-subject"]["entry"]
    assert "commit-msg" in config["default_install_hook_types"]
