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


# ------------------------------------------------------------------------ prompts, probe, presets (issue 13)
def test_tool_call_gets_its_own_prompts_and_a_search_r1_prompt_is_refused() -> None:
    from igpo_rlhf.config import SEARCH_R1_PROMPT, TOOL_CALL_PROMPT, TOOL_CALL_SYSTEM_PROMPT

    cfg = load_config(None, ["rollout.protocol=tool_call", "rollout.use_chat_template=true"])
    assert (cfg.rollout.prompt_template, cfg.rollout.system_prompt) == (
        TOOL_CALL_PROMPT,
        TOOL_CALL_SYSTEM_PROMPT,
    )
    assert "<search>" not in TOOL_CALL_SYSTEM_PROMPT + TOOL_CALL_PROMPT
    assert load_config(None).rollout.prompt_template == SEARCH_R1_PROMPT  # search_r1 keeps Search-R1's
    # a system prompt the user sets is kept (the tool_call user prompt default still applies)
    own = load_config(None, ["rollout.protocol=tool_call", "rollout.use_chat_template=true",
                             "rollout.system_prompt=Be brief."])  # fmt: skip
    assert (own.rollout.system_prompt, own.rollout.prompt_template) == ("Be brief.", TOOL_CALL_PROMPT)
    with pytest.raises(ConfigError, match=r"rollout.prompt_template asks for <search> tags, which are protocol "
                                          r"search_r1's; with rollout.protocol=tool_call"):  # fmt: skip
        load_config(None, ["rollout.protocol=tool_call", "rollout.use_chat_template=true",
                           f"rollout.prompt_template={SEARCH_R1_PROMPT!r}"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"rollout.system_prompt asks for <tool_call> tags"):
        load_config(None, ["rollout.system_prompt=Call tools in <tool_call> tags."])


def test_the_answer_separator_follows_the_prompt_or_must_agree_with_it() -> None:
    from igpo_rlhf.scoring.probe import answer_separator

    def separator(*overrides: str) -> str:
        cfg = load_config(None, list(overrides))
        return answer_separator(
            cfg.algorithm.answer_separator, cfg.rollout.system_prompt, cfg.rollout.prompt_template
        )

    assert separator() == " "  # Search-R1's prompt: For example, <answer> Beijing </answer>
    newline = 'rollout.prompt_template="Answer as <answer>\\nParis\\n</answer>. {question}"'
    assert separator(newline) == "\n"
    assert separator('rollout.prompt_template="{question}"', "algorithm.answer_separator=''") == ""
    with pytest.raises(
        ConfigError, match=r"algorithm.answer_separator='\\n', but the prompt's example answer"
    ):
        load_config(None, ['algorithm.answer_separator="\\n"'])  # the default prompt shows ' '


def test_presets_fill_the_keys_the_config_does_not_set(tmp_path: Path) -> None:
    from igpo_rlhf.config import PAPER_ANSWER_PROBE

    recipe = load_config(None, ["algorithm.preset=authors_2026"]).algorithm
    assert (recipe.ig_kind, recipe.norm, recipe.answer_probe) == ("log_prob_diff", "separate", "<answer>")
    mine = load_config(None, ["algorithm.preset=authors_2026", "algorithm.norm=joint"]).algorithm
    assert (mine.ig_kind, mine.norm) == ("log_prob_diff", "joint")  # a key the config sets wins
    probe = load_config(None, ["algorithm.preset=paper_probe"]).algorithm
    assert (
        probe.answer_probe
        == PAPER_ANSWER_PROBE
        == "\nNow there's enough information to answer\n</think>\n<answer>"
    )
    # the resolved config round-trips through a file
    from igpo_rlhf.config import dump_config

    path = _write(tmp_path, dump_config(load_config(None, ["algorithm.preset=paper_probe"])))
    assert load_config(path).algorithm == probe
    with pytest.raises(ConfigError, match="algorithm.preset"):
        load_config(None, ["algorithm.preset=nope"])


def test_memory_keys_have_bounds() -> None:
    cfg = load_config(None, ["train.logits_chunk=7", "scorer.logits_chunk=9", "resources.gpu_memory_gb=141"])
    assert (cfg.train.logits_chunk, cfg.scorer.logits_chunk, cfg.resources.gpu_memory_gb) == (7, 9, 141.0)
    for override in ("train.logits_chunk=0", "scorer.logits_chunk=0", "resources.gpu_memory_gb=0"):
        with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
            load_config(None, [override])


def test_run_paths_become_absolute_and_relative_ones_are_refused_on_a_cluster(tmp_path: Path) -> None:
    from igpo_rlhf.config import resolve_run_paths

    cfg = load_config(None, ["model.path=models/m", "model.ref_path=models/ref", "data.train=[q/train.jsonl, world:train]",
                             "data.eval=[q/test.parquet]", "logging.run_dir=runs/x", "search.proxy.corpus=c/p.jsonl"])  # fmt: skip
    local = resolve_run_paths(cfg, cluster=False, base=tmp_path)
    assert local.model.path == str(tmp_path / "models/m") and local.model.ref_path == str(
        tmp_path / "models/ref"
    )
    assert local.data.train == [str(tmp_path / "q/train.jsonl"), "world:train"]  # world entries are not paths
    assert local.data.eval == [str(tmp_path / "q/test.parquet")]
    assert local.data.world.dir == str(tmp_path / "runs/world")  # read: a world: entry is used
    assert local.logging.run_dir == str(tmp_path / "runs/x")
    assert local.search.proxy.corpus == tmp_path / "c/p.jsonl"
    assert local.search.proxy.cache.dir == tmp_path / ".cache/search"
    assert resolve_run_paths(local, cluster=True) == local  # absolute everywhere: accepted on a cluster

    with pytest.raises(ConfigError) as err:
        resolve_run_paths(cfg, cluster=True)
    message = str(err.value)
    for key in ("model.path='models/m'", "model.ref_path='models/ref'", "data.train[0]='q/train.jsonl'",
                "data.eval[0]='q/test.parquet'", "data.world.dir='runs/world'", "logging.run_dir='runs/x'",
                "search.proxy.corpus='c/p.jsonl'", "search.proxy.cache.dir='.cache/search'"):  # fmt: skip
        assert key in message
    assert "model.critic_path" not in message and "world:train" not in message
    # a running proxy (search.url) reads no file of ours: its keys are not asked for
    remote = cfg.model_copy(update={"search": cfg.search.model_copy(update={"url": "http://proxy:8000"})})
    with pytest.raises(ConfigError) as err:
        resolve_run_paths(remote, cluster=True)
    assert "search.proxy" not in str(err.value)


def test_train_resolves_paths_and_refuses_relative_ones_when_joining_a_cluster(tmp_path, monkeypatch, capsys):
    from igpo_rlhf.ray.train import main as train_main

    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert train_main(["-c", str(ROOT / "configs/demo.yaml")]) == 2  # the demo's paths are relative
    err = capsys.readouterr().err
    assert "relative paths while joining a Ray cluster: model.path='.cache/demo/model'" in err
    assert (
        "logging.run_dir='runs/demo'" in err and "search.proxy.corpus='.cache/demo/world/corpus.jsonl'" in err
    )
