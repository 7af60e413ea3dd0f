"""Suite-wide settings (everything offline, Ray without token auth, cached DeepSpeed ops), the one local
Ray fixture the actor and end-to-end tests share, and the tiny world + model + search proxy that the
end-to-end and eval tests share (built once per session)."""

import os
import time
from pathlib import Path

import pytest
from hypothesis import settings

# No per-example deadline: the suite shares 2 cores with Ray actors and servers, and a slow example is not a bug.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Torch on one thread in the test process: the models here are tiny, and on a shared 2-core box several
    threads spin against each other (measured: a 2-layer forward pass 10-30x slower). Actors get
    OMP_NUM_THREADS=1 from `local_ray`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


RAY_CPUS = 2


def start_local_ray() -> None:
    import ray

    ray.init(
        address="local",
        num_cpus=RAY_CPUS,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}},
    )


@pytest.fixture(scope="session")
def _ray_session():
    """Shuts down at the end of the session the local Ray that `local_ray` keeps between modules."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def local_ray(_ray_session):
    """One local Ray (2 logical CPUs; actors ask for fractions), started by the first module that asks and kept
    for the next (starting one costs ~7 s here); yields its GCS address. A module that leaves actors holding
    CPUs behind gets it restarted, so the next module starts on an empty cluster. Actors use one torch thread
    each (OMP_NUM_THREADS=1): more only fight over the 2 cores."""
    import ray

    if not ray.is_initialized():
        start_local_ray()
    yield ray.get_runtime_context().gcs_address
    if not ray.is_initialized():
        return
    deadline = time.monotonic() + 5.0
    while ray.available_resources().get("CPU", 0.0) < RAY_CPUS and time.monotonic() < deadline:
        time.sleep(0.1)
    if ray.available_resources().get("CPU", 0.0) < RAY_CPUS:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(world_dir, model_dir): the world rendered and the tiny model warm-started on its demonstrations."""
    from tests.tiny_world import build_tiny

    return build_tiny(tmp_path_factory.mktemp("e2e-tiny"))


@pytest.fixture(scope="session")
def proxy(tiny, tmp_path_factory):
    """The real search proxy (BM25 over the tiny world's corpus) in its own process on 127.0.0.1."""
    from igpo_rlhf.config import load_config
    from services.search_proxy.launch import start_proxy

    world_dir, _ = tiny
    cfg = load_config(None, [f"search.proxy.corpus={world_dir / 'corpus.jsonl'}", 'search.proxy.cache.mode="off"',
                             f"search.proxy.cache.dir={tmp_path_factory.mktemp('search-cache')}"])  # fmt: skip
    with start_proxy(cfg.search.proxy, port=0) as running:
        yield running
