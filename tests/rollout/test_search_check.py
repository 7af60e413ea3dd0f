"""`check_search`: the check `igpo train` runs on the search backend before Ray starts and while it waits for a
failing one. Against real servers: a socket that never answers, a closed port, a server answering errors,
and the real proxy (also in cache replay mode, which answers unknown queries with its 404)."""

from __future__ import annotations

from pathlib import Path

import pytest

from igpo_rlhf.config import load_config
from igpo_rlhf.rollout.searcher import SearchUnavailable, check_search
from services.search_proxy.launch import start_proxy
from services.search_proxy.settings import ProxySettings
from tests.search_backends import ScriptedBackend, hanging_socket
from tests.services.conftest import free_port, write_corpus


def search_cfg(*overrides: str):
    return load_config(None, list(overrides)).search


@pytest.fixture(scope="module")
def real_proxy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("check")
    settings = ProxySettings.model_validate(
        {"corpus": write_corpus(tmp / "c.jsonl"), "cache": {"dir": tmp / "c"}}
    )
    with start_proxy(settings) as proxy:
        yield proxy


@pytest.mark.timeout(30)  # the default timeout is 5 s per request and no retries: not 30 s x 3 attempts
def test_a_backend_that_never_answers_fails_the_check_within_its_timeout():
    with hanging_socket() as url, pytest.raises(SearchUnavailable) as info:
        check_search(url, search_cfg())
    assert str(info.value) == (
        f"search backend at {url}: GET /healthz did not answer within 5 s (search.failures.check_timeout_s)"
    )


def test_a_closed_port_and_a_server_answering_errors_are_named():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(
        SearchUnavailable, match=rf"search backend at {url}: GET /healthz failed: ConnectError"
    ):
        check_search(url, search_cfg())
    with ScriptedBackend(None, mode="fail") as backend, pytest.raises(SearchUnavailable) as info:
        check_search(backend.url, search_cfg())
    assert str(info.value).startswith(f"search backend at {backend.url}: GET /healthz answered HTTP 500")


def test_healthz_alone_is_not_enough_one_real_query_must_answer(real_proxy):
    # healthz passes through to the real proxy, the query fails: the check names the query
    def fail_search(_backend, _method, path):
        return "fail" if path == "/search" else "pass"

    with ScriptedBackend(real_proxy.url, on_request=fail_search) as backend:
        with pytest.raises(SearchUnavailable) as info:
            check_search(backend.url, search_cfg())
        assert str(info.value).startswith(
            f"search backend at {backend.url}: one query (POST /search) answered HTTP 500"
        )
        assert [(m, p) for m, p, _ in backend.requests] == [("GET", "/healthz"), ("POST", "/search")]


@pytest.mark.timeout(60)
def test_a_query_that_hangs_fails_within_the_configured_timeout(real_proxy):
    def hang_search(_backend, _method, path):
        return "hang" if path == "/search" else "pass"

    with (
        ScriptedBackend(real_proxy.url, on_request=hang_search) as backend,
        pytest.raises(SearchUnavailable) as info,
    ):
        check_search(backend.url, search_cfg("search.failures.check_timeout_s=0.5"))
    assert "POST /search did not answer within 0.5 s (search.failures.check_timeout_s)" in str(info.value)


def test_the_real_proxy_passes_and_gets_one_query(real_proxy):
    with ScriptedBackend(real_proxy.url) as backend:
        check_search(backend.url, search_cfg())
        assert backend.requests == [("GET", "/healthz", "pass"), ("POST", "/search", "pass")]


def test_a_replay_proxy_passes_although_the_check_query_is_not_cached(tmp_path: Path):
    corpus = write_corpus(tmp_path / "c.jsonl")
    settings = ProxySettings.model_validate(
        {"corpus": corpus, "cache": {"dir": tmp_path / "c", "mode": "replay"}}
    )
    with start_proxy(settings) as proxy, ScriptedBackend(proxy.url) as backend:
        check_search(
            backend.url, search_cfg()
        )  # the proxy's 404 replay miss for the check query is an answer
        assert [(m, p) for m, p, _ in backend.requests] == [("GET", "/healthz"), ("POST", "/search")]
