"""ProxySettings: YAML loading, errors naming the key, flags over files, the auth default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.search_proxy.__main__ import parse_args, settings_from_args
from services.search_proxy.settings import (
    ProxySettings,
    dump_settings,
    is_loopback,
    load_settings,
    settings_from_dict,
)

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_configs_load_and_defaults_are_documented():
    for path in sorted((ROOT / "configs" / "search").glob("*.yaml")):
        settings = load_settings(path)
        assert settings.backend in ("bm25", "dense", "hybrid")
    # every field of every section has a help string (the schema is the documentation)
    sections = [
        ProxySettings,
        *(f.annotation for f in ProxySettings.model_fields.values() if hasattr(f.annotation, "model_fields")),
    ]
    for section in sections:
        for name, field in section.model_fields.items():
            assert field.description, f"{section.__name__}.{name} has no description"


def test_yaml_round_trip(tmp_path: Path):
    settings = settings_from_dict(
        {"backend": "hybrid", "corpus": "c.jsonl", "bm25": {"k1": 1.5}, "hybrid": {"rrf_k": 10}}
    )
    assert load_settings(dump_settings(settings, tmp_path / "s.yaml")) == settings


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"bm25": {"k1": -1}}, "bm25.k1: Input should be greater than 0"),
        (
            {"bm25": {"k1": 1, "kk": 2}},
            "bm25.kk: unknown key; accepted keys here: k1, b, method, stopwords",
        ),
        ({"bakend": "bm25"}, "bakend: unknown key"),
        ({"backend": "google"}, "backend: Input should be"),
        ({"port": 70000}, "port: Input should be less than or equal to 65535"),
        ({"cache": {"mode": "sometimes"}}, "cache.mode: Input should be 'off', 'read_write' or 'replay'"),
        (
            {"limits": {"default_top_k": 50, "max_top_k": 10}},
            "default_top_k (50) must not exceed max_top_k (10)",
        ),
        ({"batching": {"window_ms": -1}}, "batching.window_ms: Input should be greater than or equal to 0"),
    ],
)
def test_bad_values_name_the_key(data, expected):
    with pytest.raises(ValueError, match="invalid search proxy settings") as info:
        settings_from_dict(data, source="x.yaml")
    assert expected in str(info.value)
    assert str(info.value).startswith("x.yaml:")


def test_unquoted_yaml_off_is_the_off_cache_mode(tmp_path: Path):
    """YAML 1.1 reads `mode: off` as false; the setting takes it as "off", and true stays an error."""
    path = tmp_path / "s.yaml"
    path.write_text("cache:\n  mode: off\n")
    assert load_settings(path).cache.mode == "off"
    with pytest.raises(ValueError, match="cache.mode: Input should be 'off', 'read_write' or 'replay'"):
        settings_from_dict({"cache": {"mode": True}}, source="x.yaml")


def test_bad_files_name_the_file(tmp_path: Path):
    with pytest.raises(ValueError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("backend: [bm25\n")
    with pytest.raises(ValueError, match=f"{bad}: not valid YAML"):
        load_settings(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="top level must be a mapping"):
        load_settings(listy)


def test_check_servable(tmp_path: Path):
    with pytest.raises(ValueError, match="backend 'bm25' needs `corpus`"):
        ProxySettings().check_servable()
    with pytest.raises(ValueError, match="corpus: file .*nope.jsonl does not exist"):
        ProxySettings(corpus=tmp_path / "nope.jsonl").check_servable()
    with pytest.raises(ValueError, match="needs `remote.url`"):
        ProxySettings(backend="remote").check_servable()
    # settings for a proxy that is never started are still valid objects (the training config embeds them)
    assert ProxySettings(backend="remote").backend == "remote"


def test_auth_is_off_on_loopback_and_on_elsewhere_by_default():
    assert (
        is_loopback("127.0.0.1")
        and is_loopback("::1")
        and is_loopback("localhost")
        and is_loopback("127.0.0.2")
    )
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    assert ProxySettings(host="127.0.0.1").auth_required() is False
    assert ProxySettings(host="0.0.0.0").auth_required() is True
    assert ProxySettings(host="0.0.0.0", auth={"enabled": False}).auth_required() is False
    assert ProxySettings(host="127.0.0.1", auth={"enabled": True}).auth_required() is True


def test_flags_override_the_file_and_work_alone(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text("backend: bm25\ncorpus: a.jsonl\nport: 9000\ncache:\n  dir: /x\n  ttl_s: 5\n")
    settings = settings_from_args(parse_args(["--config", str(config), "--port", "0", "--cache-dir", "/y"]))
    assert (settings.port, str(settings.cache.dir), settings.cache.ttl_s, str(settings.corpus)) == (
        0,
        "/y",
        5,
        "a.jsonl",
    )
    alone = settings_from_args(parse_args(["--backend", "dense", "--corpus", "b.jsonl", "--host", "0.0.0.0"]))
    assert (alone.backend, str(alone.corpus), alone.host, alone.port) == ("dense", "b.jsonl", "0.0.0.0", 8000)


def test_cli_reports_a_bad_config_and_exits_2(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text("backend: bm25\nbm25: {k1: 0}\n")
    done = subprocess.run(
        [sys.executable, "-m", "services.search_proxy", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "bm25.k1: Input should be greater than 0" in done.stderr


def test_importing_the_package_pulls_in_no_heavy_module():
    code = (
        "import sys, services.search_proxy, services.search_proxy.settings, services.search_proxy.client;"
        "heavy = {'torch', 'faiss', 'sentence_transformers', 'igpo_rlhf', 'fastapi', 'bm25s', 'uvicorn'};"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr
