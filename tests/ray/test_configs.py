"""The shipped training configs: demo variants stay in sync, paper configs carry the paper's settings."""

from pathlib import Path

import pytest

from igpo_rlhf.config import load_config
from igpo_rlhf.ray.trainer import check_run_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


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


def test_wiki_demo_differs_from_the_demo_only_in_its_data():
    demo = flat(load_config(CONFIGS / "demo.yaml").model_dump(mode="json"))
    wiki = flat(load_config(CONFIGS / "demo_wiki.yaml").model_dump(mode="json"))
    assert {k for k in demo if demo[k] != wiki[k]} == {"data.train", "search.proxy.corpus", "logging.run_dir"}
    assert wiki["data.train"] == ["../shared/data/qa/r1searcher_hotpotqa_500.jsonl"]
    assert wiki["search.proxy.corpus"] == "../shared/data/corpus/wiki_passages.jsonl.gz"


@pytest.mark.parametrize("name", ["demo.yaml", "demo_grpo.yaml", "demo_ppo.yaml", "demo_wiki.yaml"])
def test_demo_configs_fit_a_two_core_cpu_box(name):
    cfg = load_config(CONFIGS / name)
    check_run_config(cfg)
    roles = ["rollout", "policy", "scorer", "reference"] + (
        ["critic"] if cfg.algorithm.estimator == "ppo" else []
    )
    assert sum(getattr(cfg.resources, r).num_cpus * getattr(cfg.resources, r).num_actors for r in roles) <= 2
    assert all(getattr(cfg.resources, r).num_gpus == 0 for r in roles)
    assert cfg.rollout.engine == "hf" and cfg.model.dtype == "float32"


@pytest.mark.parametrize("name", ["qwen2.5-3b-igpo.yaml", "qwen2.5-7b-igpo.yaml"])
def test_paper_configs_have_the_paper_hyper_parameters(name):
    cfg = load_config(CONFIGS / name)
    check_run_config(cfg)
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
