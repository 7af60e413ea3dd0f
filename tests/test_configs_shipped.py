"""The shipped training configs: demo variants stay in sync, paper configs carry the paper's settings."""

import re
from pathlib import Path

import pytest
import yaml

from igpo_rlhf.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize(("name", "estimator"), [("demo_grpo.yaml", "grpo"), ("demo_ppo.yaml", "ppo")])
def test_demo_variants_differ_from_the_demo_only_in_the_estimator(name, estimator):
    demo = flat(load_config(CONFIGS / "demo.yaml").model_dump(mode="json"))
    variant = flat(load_config(CONFIGS / name).model_dump(mode="json"))
    diff = {k: (demo[k], variant[k]) for k in demo if demo[k] != variant[k]}
    assert diff == {
        "algorithm.estimator": ("igpo", estimator),
        "logging.run_dir": ("runs/demo", f"runs/demo_{estimator}"),
    }


def test_wiki_demo_differs_from_the_demo_only_in_its_data_and_length():
    demo = flat(load_config(CONFIGS / "demo.yaml").model_dump(mode="json"))
    wiki = flat(load_config(CONFIGS / "demo_wiki.yaml").model_dump(mode="json"))
    assert {k for k in demo if demo[k] != wiki[k]} == {
        "data.train", "data.eval", "search.proxy.corpus", "logging.run_dir",
        "train.steps", "train.prompts_per_step", "eval.every_n_steps",
    }  # fmt: skip
    assert wiki["data.train"] == ["../shared/data/qa/r1searcher_hotpotqa_500.jsonl"]
    assert wiki["search.proxy.corpus"] == "../shared/data/corpus/wiki_passages.jsonl.gz"


@pytest.mark.parametrize("name", ["demo.yaml", "demo_grpo.yaml", "demo_ppo.yaml", "demo_wiki.yaml"])
def test_demo_configs_fit_a_two_core_cpu_box(name):
    cfg = load_config(CONFIGS / name)
    roles = ["rollout", "policy", "scorer", "reference"] + (
        ["critic"] if cfg.algorithm.estimator == "ppo" else []
    )
    assert sum(getattr(cfg.resources, r).num_cpus * getattr(cfg.resources, r).num_actors for r in roles) <= 2
    assert all(getattr(cfg.resources, r).num_gpus == 0 for r in roles)
    assert cfg.rollout.engine == "hf" and cfg.model.dtype == "float32"


@pytest.mark.parametrize("name", ["qwen2.5-3b-igpo.yaml", "qwen2.5-7b-igpo.yaml"])
def test_paper_configs_have_the_paper_hyper_parameters(name):
    cfg = load_config(CONFIGS / name)
    t, r, a = cfg.train, cfg.rollout, cfg.algorithm
    assert (t.lr, t.lr_scheduler, t.prompts_per_step, r.n_samples) == (1e-6, "constant", 32, 16)
    assert (r.max_turns, r.temperature, r.top_p, t.grad_clip, t.ppo_epochs) == (10, 1.0, 1.0, 1.0, 1)
    assert (a.estimator, a.kl_coef, a.kl_estimator, cfg.model.dtype, r.engine) == (
        "igpo",
        0.001,
        "k3",
        "bfloat16",
        "vllm",
    )
    res = cfg.resources
    assert res.colocate
    colocated = [res.policy, res.reference, res.scorer, res.critic]
    assert sum(x.num_gpus for x in colocated) <= 1.0  # actor i of every role shares one GPU (ppo included)
    assert len({x.num_actors for x in colocated}) == 1


def _set_keys(tree: dict, prefix: str = "") -> list[str]:
    """Dotted keys of the leaves a YAML file sets (not the defaults it leaves alone)."""
    out = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out += _set_keys(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def _read_somewhere(field: str, sources: dict[Path, str]) -> list[Path]:
    """Files that read attribute `field` (`x.field`, not an assignment) or name it in getattr/a string key."""
    attribute = re.compile(rf"\.{re.escape(field)}\b(?!\s*=[^=])(?!\s*\()")  # read, not assigned or called
    by_name = re.compile(rf"[\"']{re.escape(field)}[\"']")
    return [p for p, text in sources.items() if attribute.search(text) or by_name.search(text)]


# the schemas define the keys; a key only they mention is read by nothing
SCHEMAS = ("igpo_rlhf/config.py", "services/search_proxy/settings.py")


@pytest.mark.parametrize(
    "path", sorted(CONFIGS.glob("**/*.yaml")), ids=lambda p: p.relative_to(CONFIGS).as_posix()
)
def test_every_key_a_shipped_config_sets_is_read_by_some_code(path):
    root = CONFIGS.parent
    sources = {
        p: p.read_text(encoding="utf-8")
        for folder in ("igpo_rlhf", "services", "ray_jobs")
        for p in (root / folder).rglob("*.py")
        if p.relative_to(root).as_posix() not in SCHEMAS
    }
    tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    unread = [key for key in _set_keys(tree) if not _read_somewhere(key.split(".")[-1], sources)]
    assert unread == [], f"{path.name} sets keys that no code reads: {unread}"


def test_the_key_check_finds_an_unread_key(tmp_path):
    sources = {tmp_path / "a.py": "x = cfg.rollout.n_samples\ncfg.other = 1\nmodel.eval()\n"}
    assert _read_somewhere("n_samples", sources) == [tmp_path / "a.py"]
    assert _read_somewhere("other", sources) == []  # assigned, never read
    assert _read_somewhere("max_turns", sources) == []
    assert _read_somewhere("eval", sources) == []  # a method call is not a config read
