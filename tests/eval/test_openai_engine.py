"""The endpoint engine against a real OpenAI-compatible server (`transformers serve`, tests/eval/conftest.py),
plus what such a server cannot be made to do on demand: fail and recover (a small local HTTP server that
answers 503 before it answers, standing in for an overloaded endpoint), and the pure text rules."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from igpo_rlhf.config import load_config
from igpo_rlhf.data.datasets import load_questions
from igpo_rlhf.models.loading import load_causal_lm, load_tokenizer
from igpo_rlhf.rollout.engine import HFEngine
from igpo_rlhf.rollout.openai_engine import (
    EndpointError,
    OpenAIEngine,
    api_key_from_env,
    context_messages,
    restore_stop,
)
from igpo_rlhf.rollout.protocols import SEARCH_TOOL, ToolCallProtocol, make_protocol
from tests.eval.conftest import free_port
from tests.rollout.tiny import make_tokenizer
from tests.tiny_world import world_overrides

STOPS = ["</search>", "</answer>"]


@pytest.fixture(scope="module")
def contexts(tiny):
    """Prompts of the tiny world's test questions, and the same prompts with a first search turn and its
    observation appended (a multi-turn context)."""
    world_dir, model_dir = tiny
    cfg = load_config(None, [f"model.path={model_dir}", *world_overrides(world_dir)])
    tok = load_tokenizer(model_dir)
    protocol = make_protocol(cfg.rollout, tok, "<answer>")
    items = load_questions(["world:test"], world_dir=world_dir)[:4]
    prompts = [protocol.prompt_ids(q.question) for q in items]
    turn = tok.encode("<think> look it up </think>\n<search> Brimvale </search>", add_special_tokens=False)
    obs = protocol.observation_ids([[{"title": "Brimvale", "text": "Brimvale is a city in Ostria."}]])
    return tok, prompts + [p + turn + obs for p in prompts[:2]]


def test_greedy_completions_equal_the_in_process_engine(served, contexts):
    """Same model behind the endpoint, temperature 0: the same tokens and finish as HFEngine, budgets
    large (stop string or EOS ends the turn) and small (the budget does)."""
    url, model_dir = served
    tok, ctxs = contexts
    hf = HFEngine(load_causal_lm(model_dir), tok)
    engine = OpenAIEngine(tok, base_url=url, model=str(model_dir), concurrency=4, retries=0)
    try:
        for budget in (48, 5):
            got = engine.generate(ctxs, max_new_tokens=[budget] * len(ctxs), stop_strings=STOPS,
                                  temperature=0.0, top_p=1.0, top_k=-1, seed=0)  # fmt: skip
            for ctx, gen in zip(ctxs, got, strict=True):
                (want,) = hf.generate([ctx], max_new_tokens=[budget], stop_strings=STOPS,
                                      temperature=0.0, top_p=1.0, top_k=-1, seed=0)  # fmt: skip
                assert (gen.token_ids, gen.finish) == (want.token_ids, want.finish)
            if budget == 5:
                assert all(g.finish == "length" and len(g.token_ids) == 5 for g in got)
            else:  # the stop-string path is exercised
                assert "stop" in {g.finish for g in got}
    finally:
        engine.close()


def test_a_down_endpoint_is_an_error_naming_it_after_its_retries(contexts):
    tok, ctxs = contexts
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    engine = OpenAIEngine(tok, base_url=url, model="m", retries=2, backoff_s=0.0)
    with pytest.raises(
        EndpointError, match=r"127\.0\.0\.1.*/v1/completions failed after 3 attempts; last: connection"
    ):
        engine.generate(ctxs[:2], max_new_tokens=[4, 4], stop_strings=STOPS, temperature=0.0, top_p=1.0,
                        top_k=-1, seed=None)  # fmt: skip
    engine.close()


class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 (Retry-After: 0) to the first `failures` requests, then a fixed completion; records the
    Authorization header and body of each request. A 400 for requests without a prompt."""

    failures = 2
    seen: list[tuple[str | None, dict]] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.headers.get("Authorization"), body))
        if "prompt" not in body:
            self._send(400, {"error": {"message": "prompt is required"}})
        elif len(self.seen) <= self.failures:
            self._send(503, {"error": "overloaded"}, {"Retry-After": "0"})
        else:
            # OpenAI drops the stop string from the text; the open <search> tells which one it was
            self._send(
                200, {"choices": [{"text": "<think> hm </think>\n<search> Ostria", "finish_reason": "stop"}]}
            )

    def _send(self, code, payload, headers=None):
        data = json.dumps(payload).encode()
        self.send_response(code)
        for k, v in {
            "Content-Type": "application/json",
            "Content-Length": str(len(data)),
            **(headers or {}),
        }.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky():
    _Flaky.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_overload_is_retried_with_the_key_from_the_environment(flaky, monkeypatch):
    monkeypatch.setenv("IGPO_TEST_KEY", "sekret-123")
    tok = make_tokenizer()
    cfg = load_config(None, ["rollout.openai.api_key_env=IGPO_TEST_KEY", f"rollout.openai.base_url={flaky}",
                             "rollout.openai.retries=3", "rollout.openai.backoff_s=0"]).rollout.openai  # fmt: skip
    engine = OpenAIEngine.from_config(cfg, tok, model_path="tiny")
    (gen,) = engine.generate([tok.encode("Question: who?")], max_new_tokens=[40], stop_strings=STOPS,
                             temperature=0.0, top_p=1.0, top_k=-1, seed=7)  # fmt: skip
    engine.close()
    assert len(_Flaky.seen) == 3  # two 503s, then the answer
    assert {auth for auth, _ in _Flaky.seen} == {"Bearer sekret-123"}
    body = _Flaky.seen[-1][1]
    assert body["prompt"] == "Question: who?" and body["stop"] == STOPS and body["max_tokens"] == 40
    assert body["model"] == "tiny" and body["temperature"] == 0.0 and "top_k" not in body
    assert gen.finish == "stop"
    assert gen.token_ids == tok.encode(
        "<think> hm </think>\n<search> Ostria</search>", add_special_tokens=False
    )
    assert "sekret" not in repr(cfg)


def test_a_refused_request_is_not_retried(flaky):
    tok = make_tokenizer()
    engine = OpenAIEngine(tok, base_url=flaky, model="m", mode="completions", retries=3, backoff_s=0.0)
    _Flaky.seen = []
    with pytest.raises(EndpointError, match="refused the request: HTTP 400"):
        engine._post({"model": "m"})
    assert len(_Flaky.seen) == 1
    engine.close()


def test_an_unset_key_variable_is_an_error_naming_it(monkeypatch):
    monkeypatch.delenv("IGPO_NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match="rollout.openai.api_key_env='IGPO_NO_SUCH_KEY'.*not set"):
        api_key_from_env("IGPO_NO_SUCH_KEY")


@pytest.mark.parametrize(
    "text, stop_reason, want",
    [
        ("<search> a </search>", None, ("<search> a </search>", "stop")),  # kept by the server
        ("<search> a ", None, ("<search> a </search>", "stop")),  # dropped: restored from the open tag
        ("<search> a ", "</search>", ("<search> a </search>", "stop")),  # vLLM names it
        ("<answer> b </answer> done", None, ("<answer> b </answer> done", "stop")),
        ("nothing open", None, ("nothing open", "eos")),  # no stop string anywhere: EOS
        ("<search> a ", 151645, ("<search> a ", "eos")),  # vLLM: a stop token id is EOS-like
    ],
)
def test_restore_stop(text, stop_reason, want):
    assert restore_stop(text, STOPS, stop_reason) == want


def test_chat_mode_maps_a_tool_call_context_back_to_its_messages():
    """The messages, rendered by the same chat template, give back exactly the context's text."""
    tok = make_tokenizer()
    protocol = ToolCallProtocol(tok, prompt_template="Q: {question}", document_template="{title}: {text}\n",
                                answer_probe="<answer>", system_prompt="Be brief.")  # fmt: skip
    turn1 = protocol.demo_turn_text(think="look", queries=["capital of France"])
    obs1 = protocol.observation_text([[{"title": "Paris", "text": "the capital"}]])
    context = protocol.prompt_text("where?") + turn1 + obs1
    messages = context_messages(protocol, context)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[1]["content"] == "Q: where?" and messages[2]["content"] == turn1
    rendered = tok.apply_chat_template(
        messages, tools=[SEARCH_TOOL], tokenize=False, add_generation_prompt=True
    )
    assert rendered == context


def test_chat_mode_refuses_search_r1():
    tok = make_tokenizer()
    protocol = make_protocol(load_config(None, []).rollout, tok, "<answer>")
    with pytest.raises(ValueError, match="only rollout.protocol=tool_call"):
        OpenAIEngine(tok, base_url="http://127.0.0.1:1/v1", model="m", mode="chat", protocol=protocol)
