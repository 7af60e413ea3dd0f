"""The search proxy `igpo train` starts, as seen from a Ray cluster (igpo_rlhf/ray/train.py start_run_proxy).

On a cluster, hf rollout actors may run on other nodes, where 127.0.0.1 is not the driver: the driver joining
a cluster (RAY_ADDRESS, as `ray job submit` sets it) starts the proxy on its node's IP with a bearer token, and
hands the token to the rollout actors itself. Here: a real proxy subprocess, a real local Ray whose workers do
NOT have the token variable (it is set after Ray started, as on another node), real RolloutActors.
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlparse

import httpx
import pytest
import ray

from igpo_rlhf.ray.generators import HFRollouts
from igpo_rlhf.ray.placement import place_roles, release
from igpo_rlhf.ray.rollout_actor import RolloutActor
from igpo_rlhf.ray.train import start_run_proxy
from igpo_rlhf.rollout.searcher import ProxySearcher
from services.search_proxy.settings import is_loopback
from tests.ray.test_rollout_actor import CORPUS, config
from tests.rollout.tiny import save_tiny


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny"))


def run_config(model_dir, tmp_path, *overrides: str):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(p) + "\n" for p in CORPUS), encoding="utf-8")
    return config(model_dir, f"search.proxy.corpus={corpus}", "search.proxy.cache.mode=off",
                  f"search.proxy.cache.dir={tmp_path / 'cache'}", "resources.rollout.num_cpus=0.2", *overrides)  # fmt: skip


def test_joining_a_cluster_serves_search_on_the_node_ip_with_a_token(
    local_ray, model_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # the driver of `ray job submit` joins the cluster
    monkeypatch.delenv("SEARCH_PROXY_TOKEN", raising=False)
    cfg = run_config(model_dir, tmp_path)
    assert cfg.search.token_env is None and cfg.search.proxy.host == "127.0.0.1"
    proxy, run_cfg = start_run_proxy(cfg, log_file=tmp_path / "proxy.log")
    placements = {}
    try:
        host = urlparse(proxy.url).hostname
        assert host == ray.util.get_node_ip_address() and not is_loopback(host)
        assert run_cfg.search.token_env == "SEARCH_PROXY_TOKEN"
        token = os.environ["SEARCH_PROXY_TOKEN"]  # generated: none was configured
        assert len(token) >= 32
        unauthorised = httpx.post(f"{proxy.url}/search", json={"queries": ["capital of France"]}, timeout=10)
        assert unauthorised.status_code == 401
        searcher = ProxySearcher(proxy.url, timeout_s=10.0, retries=0, token=token)
        assert searcher.search(["capital of France"], 1)[0][0]["title"] == "Paris"

        # the rollout actors get the token from the driver; Ray's workers never had the variable
        placements = place_roles(run_cfg.resources, ["rollout"])
        rollouts = HFRollouts(run_cfg, placements["rollout"], proxy.url)
        search = ray.get(
            rollouts.group.actors[0].__ray_call__.remote(lambda self: self.search.search(["Italy"], 1))
        )
        assert search[0][0]["title"] == "Rome"
        rollouts.close()
        # what a remote actor did before: read the variable in its own environment, where it is not set
        reads_its_env = (
            ray.remote(RolloutActor).options(**placements["rollout"].options(0)).remote(run_cfg, proxy.url)
        )
        with pytest.raises(ray.exceptions.RayActorError, match="that environment variable is not set"):
            ray.get(reads_its_env.weights_version.remote())
    finally:
        release(placements)
        proxy.stop()


def test_a_configured_token_is_used_and_a_local_run_stays_on_loopback(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    monkeypatch.setenv("MY_TOKEN", "t" * 40)
    cfg = run_config(
        model_dir, tmp_path, "search.proxy.auth.token_env=MY_TOKEN", "search.token_env=CLIENT_TOKEN"
    )
    proxy, run_cfg = start_run_proxy(cfg, log_file=tmp_path / "proxy.log")
    try:
        assert os.environ["CLIENT_TOKEN"] == "t" * 40 and run_cfg.search.token_env == "CLIENT_TOKEN"
        assert ProxySearcher(proxy.url, timeout_s=10.0, retries=0, token="t" * 40).search(["France"], 1)
    finally:
        proxy.stop()
        os.environ.pop("CLIENT_TOKEN", None)

    monkeypatch.delenv("RAY_ADDRESS")  # a local Ray: every actor is on this machine
    cfg = run_config(model_dir, tmp_path)
    proxy, run_cfg = start_run_proxy(cfg, log_file=tmp_path / "proxy2.log")
    try:
        assert urlparse(proxy.url).hostname == "127.0.0.1" and run_cfg == cfg  # no token, config unchanged
        assert httpx.post(f"{proxy.url}/search", json={"queries": ["France"]}, timeout=10).status_code == 200
    finally:
        proxy.stop()
    vllm = run_config(model_dir, tmp_path, "rollout.engine=vllm", "resources.rollout.num_gpus=1")
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # engine=vllm: the agent loop searches from this driver
    proxy, _ = start_run_proxy(vllm, log_file=tmp_path / "proxy3.log")
    try:
        assert urlparse(proxy.url).hostname == "127.0.0.1"
    finally:
        proxy.stop()
