import subprocess
import sys

from tests.conftest import REPO


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "lab6", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_help_lists_every_command():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("synth", "train-evaluator", "train", "sample", "evaluate", "run"):
        assert cmd in r.stdout


def test_version():
    import lab6
    r = run_cli("--version")
    assert r.returncode == 0 and lab6.__version__ in r.stdout


def test_usage_error_exits_2():
    r = run_cli("train", "--profile", "huge", "--out", "x")
    assert r.returncode == 2 and "invalid choice: 'huge'" in r.stderr
    r = run_cli("frobnicate")
    assert r.returncode == 2
