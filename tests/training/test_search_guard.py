"""The search guard: which batches are not trained on (rates worked out by hand below), and the wait for a
failing backend, checked with `check_search` against a real server that fails and then recovers."""

from __future__ import annotations

import pytest

from igpo_rlhf.config import load_config
from igpo_rlhf.rollout.searcher import check_search
from igpo_rlhf.rollout.trajectory import Trajectory
from igpo_rlhf.training.search_guard import SearchGuard
from services.search_proxy.launch import start_proxy
from services.search_proxy.settings import ProxySettings
from tests.search_backends import ScriptedBackend
from tests.services.conftest import write_corpus


def failures(*overrides: str):
    return load_config(None, [f"search.failures.{o}" for o in overrides]).search.failures


def batch(*searches_errors: tuple[int, int]) -> list[Trajectory]:
    """Trajectories with these (searches, errors); nothing else of them is read."""
    return [
        Trajectory(
            0, k, "q", ["a"], {}, [1, 2], 1, [(1, 2)], [], [], None, "eos", n_searches=s, n_search_errors=e
        )
        for k, (s, e) in enumerate(searches_errors)
    ]


def test_a_batch_is_rejected_above_max_error_rate():
    guard = SearchGuard(failures())  # max_error_rate 0.2
    v = guard.judge(batch((2, 1), (2, 0)))  # 1 of 4 failed: 25%
    assert (v.errors, v.searches, v.rate) == (1, 4, 0.25)
    assert v.reason == "1 of 4 searches failed (25% > search.failures.max_error_rate=0.2)"
    assert guard.judge(batch((3, 1), (2, 0))).reason is None  # 1 of 5: exactly 20% is allowed
    assert guard.judge(batch((0, 0), (0, 0))).reason is None  # no search at all
    assert SearchGuard(failures("max_error_rate=1")).judge(batch((3, 3))).reason is None  # 1 disables it


def test_the_window_counts_the_batches_trained_on_only():
    guard = SearchGuard(failures("window_steps=3", "max_window_error_rate=0.1"))
    for _ in range(2):  # 1 of 10 each: fine per batch (10% <= 20%), the window not yet full (3 batches)
        v = guard.judge(batch((10, 1)))
        assert v.reason is None
        guard.accept(v)
    v = guard.judge(batch((10, 2)))  # 20%: fine alone; over the window (1 + 1 + 2) / 30 = 13.3% > 10%
    assert (v.window_errors, v.window_searches) == (4, 30)
    assert (
        v.reason
        == "4 of 30 searches of the last 3 steps failed (13% > search.failures.max_window_error_rate=0.1)"
    )
    guard.reject()
    v = guard.judge(batch((10, 0)))  # the rejected batch is not in the window: (1 + 1 + 0) / 30
    assert (v.window_errors, v.window_searches, v.reason) == (2, 30, None)
    assert guard.accept(v) == (1, 0.0)  # one batch rejected since the last one used, no wait
    v = guard.judge(batch((10, 2)))  # the oldest batch left the window: (1 + 0 + 2) / 30 = 10%, allowed
    assert (v.window_errors, v.window_searches, v.reason) == (3, 30, None)
    # validation rollouts are judged alone, and a validation batch does not enter the window
    assert guard.judge(batch((10, 2)), windowed=False).window_searches == 10
    restored = SearchGuard(failures("window_steps=3", "max_window_error_rate=0.1"))
    restored.load_state_dict(guard.state_dict())
    assert restored.judge(batch((10, 2))) == v


def test_the_wait_ends_when_the_backend_answers_its_check_again(tmp_path):
    cfg = load_config(
        None, ["search.failures.backoff_s=0.05", "search.failures.recovery_timeout_s=60"]
    ).search
    settings = ProxySettings.model_validate(
        {"corpus": write_corpus(tmp_path / "c.jsonl"), "cache": {"dir": tmp_path}}
    )
    said: list[str] = []

    def recover_after_two_failed_checks(backend, _method, path):
        return "pass" if backend.count("/healthz") == 2 else None

    with (
        start_proxy(settings) as proxy,
        ScriptedBackend(proxy.url, mode="fail", on_request=recover_after_two_failed_checks) as backend,
    ):
        guard = SearchGuard(cfg.failures)
        guard.reject()
        recovery = guard.wait_for_backend(lambda: check_search(backend.url, cfg), said.append, "why")
    assert recovery.recovered
    assert [(p, m) for _, p, m in backend.requests] == [
        ("/healthz", "fail"),
        ("/healthz", "fail"),
        ("/healthz", "pass"),
        ("/search", "pass"),
    ]
    assert len(said) == 2 and all(line.startswith(f"search backend at {backend.url}: GET /healthz answered HTTP 500")
                                  for line in said)  # fmt: skip
    assert "next check in" in said[0] and "search.failures.recovery_timeout_s=60" in said[0]
    skipped, waited = guard.accept(guard.judge(batch((1, 0))))
    assert skipped == 1 and waited >= 0.05 + 0.1  # it slept the backoff twice before the check that passed


@pytest.mark.timeout(60)
def test_the_wait_gives_up_after_recovery_timeout_s():
    cfg = load_config(None, ["search.failures.backoff_s=0.2", "search.failures.recovery_timeout_s=1"]).search
    with ScriptedBackend(None, mode="fail") as backend:
        guard = SearchGuard(cfg.failures)
        guard.reject()
        recovery = guard.wait_for_backend(lambda: check_search(backend.url, cfg), lambda _: None, "why")
        checks = backend.count("/healthz")
    assert not recovery.recovered and "GET /healthz answered HTTP 500" in recovery.error
    assert checks >= 2  # backoff 0.2, 0.4, then what is left of the second
