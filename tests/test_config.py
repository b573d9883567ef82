"""Settings: the profiles, their YAML files, overrides, and what a config file may not say."""
from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import yaml

from lab6.config import PROFILES, SECTIONS, Config, config_from_dict, load_config, to_yaml
from lab6.errors import ConfigError
from tests.conftest import REPO


def test_every_profile_delivers_64px():
    for name, cfg in PROFILES.items():
        assert cfg.model.output_size == 64, name
        assert 64 % cfg.model.sample_size == 0, name
    seed = PROFILES["seed"]
    assert (seed.schedule.prediction_type, seed.sample.sampler, seed.sample.num_steps,
            seed.sample.guidance_scale, seed.train.lr, seed.train.cond_drop_prob) == \
        ("epsilon", "ddpm", 1000, 1.0, 1e-4, 0.0)
    full, shipped = PROFILES["full"], load_config("quick", REPO / "pretrained/quick/decay.yaml")
    assert full.model.patch_size == 2 and full.train.mixed_precision == "bf16" and full.train.batch_size >= 256
    assert full.train.lr_scheduler == "warmup_stable_decay" and full.train.export_dtype == "float16"
    same = ("object_tokens", "multi_hot", "object_count", "tokens_every_level", "down_block_types", "up_block_types")
    assert [getattr(full.model, k) for k in same] == [getattr(shipped.model, k) for k in same]  # the CPU chunks' net
    assert PROFILES["quick"].model == shipped.model  # the quick profile's net is the one pretrained/quick was trained as



@pytest.mark.parametrize("name", list(PROFILES))
def test_profile_yaml_matches_dataclasses(name):
    path = REPO / "configs" / f"{name}.yaml"
    assert path.read_text() == to_yaml(PROFILES[name]), f"{path} drifted: run `python -m lab6.config`"
    assert load_config(name, path) == PROFILES[name]



def test_overrides_and_yaml(tmp_path):
    cfg = load_config("tiny", max_steps=3, sample={"seed": 5}, train={"seed": 7})
    assert (cfg.train.max_steps, cfg.sample.seed, cfg.train.seed) == (3, 5, 7)
    assert PROFILES["tiny"].train.max_steps != 3  # the profile itself is untouched
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  lr: 0.01\nmodel:\n  block_out_channels: [8, 16]\n")
    cfg = load_config("tiny", y)
    assert cfg.train.lr == 0.01 and cfg.model.block_out_channels == (8, 16)



@pytest.mark.parametrize("text, match", [
    ("train:\n  learning_rate: 0.1\n", "train.learning_rate: unknown setting"),
    ("optim:\n  lr: 0.1\n", "optim: unknown section"),
    ("train:\n  max_steps: 0\n", "train.max_steps: must be > 0"),
    ("train:\n  batch_size: -2\n", "train.batch_size: must be > 0"),
    ("train:\n  lr: 0\n", "train.lr: must be > 0"),
    ("sample:\n  guidance_scale: -1\n", "sample.guidance_scale: must be >= 0"),
    ("sample:\n  eta: 2\n", "sample.eta: must be in \\[0, 1\\]"),
    ("sample:\n  sampler: euler\n", "sample.sampler"),
    ("train:\n  max_steps: ten\n", "expected an integer"),
    ("profile: quick\n", "file is for profile 'quick'"),
    ("[1, 2]\n", "expected a mapping"),
])
def test_bad_yaml_is_rejected(tmp_path, text, match):
    y = tmp_path / "bad.yaml"
    y.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_config("tiny", y)
    assert str(y) in str(e.value)



def test_bad_overrides_are_rejected():
    with pytest.raises(ConfigError, match="ambiguous"):
        load_config("tiny", seed=1)
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config("tiny", nonsense=1)
    with pytest.raises(ConfigError, match="unknown profile"):
        load_config("huge")
    with pytest.raises(ConfigError, match="zero_terminal_snr"):
        load_config("tiny", schedule={"zero_terminal_snr": True, "prediction_type": "epsilon"})



@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_rejected():
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        load_config("tiny", device="cuda")


# the annotations lab6.config._coerce checks a YAML value against
COERCED = re.compile(r"^(int|float|str|bool|tuple\[(int|str), \.\.\.\])( \| None)?$")



def _untyped(cls) -> list[str]:
    """What of a config section YAML cannot reach or check: a public class attribute without an annotation (not a
    dataclass field, so invisible to YAML, overrides and to_dict), a field annotated with a type no check knows."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems = [f"{cls.__name__}.{k}: no annotation, not a field" for k, v in vars(cls).items()
                if not k.startswith("_") and k not in fields and not callable(v)]
    problems += [f"{cls.__name__}.{f.name}: {f.type}" for f in fields.values() if not COERCED.match(str(f.type))]
    return problems



def test_config_sections_are_typed():
    assert SECTIONS == {section: type(getattr(Config(), section)) for section in ("model", "schedule", "train", "sample")}
    for cls in SECTIONS.values():
        assert _untyped(cls) == []
    for cfg in PROFILES.values():  # every field's value comes back from YAML with its type
        assert config_from_dict(yaml.safe_load(to_yaml(cfg))) == cfg

    @dataclasses.dataclass
    class Trap:  # HF's TrainingConfig trap, which this test exists to catch
        lr: float = 1e-3
        seed = 0
        betas: list = dataclasses.field(default_factory=list)

    assert _untyped(Trap) == ["Trap.seed: no annotation, not a field", "Trap.betas: list"]
