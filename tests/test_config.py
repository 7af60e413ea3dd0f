"""The config schema: defaults, YAML + overrides, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from igpo_rlhf.config import Config, ConfigError, load_config, parse_override

ROOT = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def _walk_fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        yield prefix + name, field
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _walk_fields(ann, prefix + name + ".")


def test_every_field_has_a_help_string_and_a_default() -> None:
    missing_help = [k for k, f in _walk_fields(Config) if not (f.description and f.description.strip())]
    required = [k for k, f in _walk_fields(Config) if f.is_required()]
    assert missing_help == []
    assert required == []


def test_defaults_follow_the_paper_setup() -> None:
    cfg = load_config()
    assert cfg.algorithm.estimator == "igpo"
    assert (cfg.algorithm.clip_eps_low, cfg.algorithm.clip_eps_high) == (0.2, 0.2)
    assert (cfg.algorithm.kl_coef, cfg.algorithm.kl_estimator) == (0.001, "k3")
    assert cfg.algorithm.format_penalty == -2.0
    assert cfg.algorithm.alias_reduce == "max"
    assert (cfg.train.lr, cfg.train.prompts_per_step, cfg.rollout.n_samples) == (1e-6, 32, 16)
    assert (cfg.rollout.max_turns, cfg.rollout.temperature, cfg.rollout.top_p) == (10, 1.0, 1.0)
    assert (cfg.train.grad_clip, cfg.train.ppo_epochs) == (1.0, 1)


def test_yaml_then_overrides_parsed_as_yaml_values(tmp_path: Path) -> None:
    path = _write(tmp_path, "algorithm:\n  estimator: grpo\nrollout:\n  n_samples: 4\n")
    cfg = load_config(path, ["rollout.n_samples=8", "algorithm.dual_clip=3", "logging.wandb_project=null"])
    assert cfg.algorithm.estimator == "grpo"
    assert cfg.rollout.n_samples == 8 and isinstance(cfg.rollout.n_samples, int)
    assert cfg.algorithm.dual_clip == 3.0
    assert cfg.logging.wandb_project is None


def test_unknown_key_names_it_and_lists_accepted_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, "algorithm:\n  estimater: grpo\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "algorithm.estimater: unknown key" in msg
    assert "estimator" in msg and "ig_kind" in msg
    with pytest.raises(ConfigError, match=r"bogus: unknown key; accepted here: model, algorithm"):
        load_config(None, ["bogus.x=1"])


@pytest.mark.parametrize(
    ("override", "key", "fragment"),
    [
        ("algorithm.gamma=1.5", "algorithm.gamma", "less than or equal to 1"),
        ("algorithm.estimator=reinforce", "algorithm.estimator", "'igpo', 'grpo' or 'ppo'"),
        ("rollout.n_samples=many", "rollout.n_samples", "valid integer"),
        ("train.zero_stage=4", "train.zero_stage", "0, 1, 2 or 3"),
        ("algorithm.dual_clip=0.5", "algorithm.dual_clip", "greater than 1"),
        ("algorithm.format_penalty=1", "algorithm.format_penalty", "less than or equal to 0"),
    ],
)
def test_bad_value_names_the_key(override: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    msg = str(err.value)
    assert f"{key}:" in msg and fragment in msg
    assert "with --set " + override in msg


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["rollout.max_prompt_tokens=4096", "rollout.max_total_tokens=1024"], "max_prompt_tokens (4096)"),
        (["rollout.n_samples=1"], "needs n_samples >= 2"),
        (["rollout.engine=vllm"], "resources.rollout.num_gpus > 0"),
        (["rollout.prompt_template=no placeholder"], "{question}"),
        (["rollout.protocol=tool_call"], "rollout.use_chat_template=true"),
    ],
)
def test_inconsistent_sections_are_errors(overrides: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, overrides)
    assert fragment in str(err.value)


def test_ppo_allows_a_single_sample_per_prompt() -> None:
    cfg = load_config(None, ["algorithm.estimator=ppo", "rollout.n_samples=1"])
    assert cfg.rollout.n_samples == 1


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("algorithm: [1, 2\n", "not valid YAML"), ("- a\n- b\n", "top level must be a mapping")],
)
def test_malformed_files(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(_write(tmp_path, text))


def test_missing_file_and_bad_overrides(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("rollout.n_samples")
    with pytest.raises(ConfigError, match="empty key segment"):
        load_config(None, ["rollout..n_samples=3"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["rollout=3", "rollout.n_samples=3"])


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "")) == Config()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    load_config(path)


def test_cli_prints_resolved_config_and_fails_cleanly(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "igpo_rlhf.cli", "config"]
    ok = subprocess.run([*run, "--set", "rollout.n_samples=5"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "n_samples: 5" in ok.stdout
    bad = subprocess.run([*run, "--set", "algorithm.gamma=2"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2
    assert "algorithm.gamma" in bad.stderr and "Traceback" not in bad.stderr
    schema = subprocess.run([*run, "--schema"], capture_output=True, text=True, cwd=ROOT)
    assert schema.returncode == 0
    assert "algorithm.ig_kind = 'prob_diff'" in schema.stdout
