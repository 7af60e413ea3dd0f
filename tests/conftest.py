"""Suite-wide settings (everything offline, Ray without token auth, cached DeepSpeed ops) and the one local
Ray fixture the actor and end-to-end tests share."""

import os
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


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray per test module (2 logical CPUs; actors ask for fractions); yields its GCS address.
    Actors and the driver use one torch thread each: more only fight over the 2 cores."""
    import ray
    import torch

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}},
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ray.get_runtime_context().gcs_address
    torch.set_num_threads(before)
    ray.shutdown()
