"""NaN and inf are refused everywhere a float comes in: every float option of every command, every float field of
the YAML config sections and of the judges' and the pipeline run's configs. (Comparisons with NaN are false, so a
range check alone lets it through: `lab6 sample --guidance nan` drew NaN images.)"""
from __future__ import annotations

import argparse
import dataclasses
import math

import pytest

from lab6.checker_train import CheckerTrainConfig
from lab6.cli import build_parser
from lab6.config import SECTIONS
from lab6.errors import ConfigError
from lab6.evaluator_train import EvaluatorTrainConfig
from lab6.run import RunConfig
from tests.cli_world import files_under, run_cli, write_file

BAD = ("nan", "inf", "-inf")


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _float_options() -> list[tuple[str, str]]:
    """(command, option) for every option of every command that argparse parses as a float."""
    return [(name, a.option_strings[-1]) for name, p in _commands().items() for a in p._actions
            if a.type is float]


def _float_fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if "float" in str(f.type)]


def _poison(value, bad: float):
    """The field's default with every float in it (tuples included) replaced by `bad`; a plain `bad` for None."""
    if isinstance(value, (list, tuple)):
        return type(value)(_poison(v, bad) for v in value)
    return bad if value is None or isinstance(value, float) else value


def test_the_enumerations_see_the_known_floats():
    assert {("sample", "--guidance"), ("run", "--guidance"), ("train", "--lr"), ("train-evaluator", "--max-minutes"),
            ("train-checker", "--lr")} <= set(_float_options())
    assert "guidance_scale" in _float_fields(SECTIONS["sample"]) and "lr" in _float_fields(SECTIONS["train"])
    assert "resolutions" in _float_fields(EvaluatorTrainConfig) and "guidance" in _float_fields(RunConfig)


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("command,option", _float_options())
def test_every_float_option_refuses_nan_and_inf(command, option, bad, tmp_path, capsys):
    """Exit 1 with one line naming the option, as for other bad values (`--steps 0`), and nothing written."""
    required = [a.option_strings[-1] for a in _commands()[command]._actions if a.required and a.option_strings]
    argv = [command, *[x for opt in required for x in (opt, tmp_path / opt.strip("-"))], f"{option}={bad}"]
    rc, err = run_cli(argv, capsys)
    assert rc == 1, err
    assert err.strip() == f"error: {option}: must be a finite number, got {float(bad)}"
    assert files_under(tmp_path) == {}


@pytest.mark.parametrize("bad", (".nan", ".inf", "-.inf", "nan"))
@pytest.mark.parametrize("section,field", [(s, f) for s, cls in SECTIONS.items() for f in _float_fields(cls)])
def test_every_float_setting_of_a_config_file_refuses_nan_and_inf(section, field, bad, tmp_path, capsys):
    config = write_file(tmp_path, "c.yaml", f"{section}:\n  {field}: {bad}\n")
    before = files_under(tmp_path)
    rc, err = run_cli(["train", "--profile", "tiny", "--config", config, "--data", tmp_path / "ds",
                       "--out", tmp_path / "out", "--no-progress"], capsys)
    assert rc == 1, err
    assert err.strip().startswith(f"error: {config}: {section}.{field}: must be a finite number, got ")
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("bad", (math.nan, math.inf))
@pytest.mark.parametrize("cls,field,name", [(cls, f, name.format(f)) for cls, name in (
    (EvaluatorTrainConfig, "EvaluatorTrainConfig.{}"), (CheckerTrainConfig, "CheckerTrainConfig.{}"),
    (RunConfig, "--{}")) for f in _float_fields(cls)])
def test_every_float_field_of_the_judges_and_the_run_refuses_nan_and_inf(cls, field, name, bad):
    name = name.replace("_", "-") if name.startswith("--") else name
    value = _poison(getattr(cls(), field), bad)
    with pytest.raises(ConfigError, match=f"^{name}: must be a finite number, got "):
        cls(**{field: value}).validate() if cls is RunConfig else cls(**{field: value})
