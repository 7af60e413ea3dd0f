"""The agent loop against the REAL search proxy (uvicorn on loopback, BM25 over a 4-passage corpus).

Most tests drive the loop with `ScriptedEngine`: test scaffolding standing in for the model's CHOICES (a
tiny random model cannot write well-formed turns), not a mock of a service: it returns, for each rollout,
the token ids of the next scripted turn, cut to the budget and stopped like a real engine. One test runs
the real HFEngine on a tiny random Qwen2 to check the plumbing end to end. Expected token ids, spans and
observations are written out by hand from the corpus below.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from igpo_rlhf.rollout.agent_loop import run_rollouts
from igpo_rlhf.rollout.engine import Generation, HFEngine
from igpo_rlhf.rollout.protocols import SearchR1Protocol, ToolCallProtocol
from igpo_rlhf.rollout.searcher import ProxySearcher
from igpo_rlhf.rollout.trajectory import PromptItem
from services.search_proxy.launch import start_proxy
from services.search_proxy.settings import ProxySettings
from tests.rollout.tiny import make_model, make_tokenizer, warm_start

CORPUS = [
    {"id": "p1", "title": "Paris", "text": "Paris is the capital of France."},
    {"id": "p2", "title": "Eiffel Tower", "text": "The Eiffel Tower was built by Gustave Eiffel."},
    {"id": "p3", "title": "Rome", "text": "Rome is the capital of Italy."},
    {"id": "p4", "title": "Tiber", "text": "The Tiber river flows through Rome."},
]
PROMPT = "Answer with search. Question: {question}\n"
OBS = "\n\n<information>{documents}</information>\n\n"
DOC = "Doc {rank}(Title: {title}) {text}\n"
# Observations of single queries with top_k=1, by hand from CORPUS.
OBS_FRANCE = "\n\n<information>Doc 1(Title: Paris) Paris is the capital of France.\n</information>\n\n"
OBS_EIFFEL = "\n\n<information>Doc 1(Title: Eiffel Tower) The Eiffel Tower was built by Gustave Eiffel.\n</information>\n\n"

T_FRANCE = "<think> find the capital </think>\n<search> capital of France </search>"
T_EIFFEL = "<think> now the tower </think>\n<search> Eiffel Tower built </search>"
T_PARIS = "<think> got it </think>\n<answer> Paris </answer>"
T_ROME = "<think> I know this </think>\n<answer> Rome </answer>"

LOOP = {
    "max_turns": 5,
    "max_new_tokens": 64,
    "max_total_tokens": 1024,
    "max_observation_tokens": 256,
    "search_top_k": 1,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": -1,
    "batch_size": 8,
    "seed": 0,
}


class ScriptedEngine:
    """Returns scripted turns (see the module docstring). Rollouts are told apart by the question in their
    context; all rollouts of one question follow the same script, one turn per engine call."""

    def __init__(self, tokenizer, scripts: dict[str, list[str]], stop_strings: list[str]):
        self.tok, self.scripts, self.stops = tokenizer, scripts, stop_strings
        self.turn_of: dict[str, int] = {}
        self.calls: list[dict] = []

    def generate(self, contexts, *, max_new_tokens, stop_strings, temperature, top_p, top_k, seed):
        self.calls.append(
            {"contexts": [list(c) for c in contexts], "budgets": list(max_new_tokens), "seed": seed}
        )
        questions = [self._question(c) for c in contexts]
        out = []
        for q, budget in zip(questions, max_new_tokens, strict=True):
            text = self.scripts[q][self.turn_of.get(q, 0)]
            ids = self.tok.encode(text, add_special_tokens=False)
            if len(ids) > budget:
                out.append(Generation(ids[:budget], "length"))
            elif ids[-1] == self.tok.eos_token_id:
                out.append(Generation(ids, "eos"))
            else:
                out.append(
                    Generation(ids, "stop" if any(text.endswith(s) for s in stop_strings) else "length")
                )
        for q in set(questions):
            self.turn_of[q] = self.turn_of.get(q, 0) + 1
        return out

    def _question(self, context):
        text = self.tok.decode(context)
        return next(q for q in self.scripts if f"Question: {q}\n" in text)


class CountingClient:
    """The real ProxySearcher, with every request's queries recorded (to check one request per round)."""

    def __init__(self, client):
        self.client, self.requests = client, []

    def search(self, queries, top_k):
        self.requests.append(list(queries))
        return self.client.search(queries, top_k)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(p) + "\n" for p in CORPUS), encoding="utf-8")
    cache = tmp_path_factory.mktemp("cache")
    settings = ProxySettings(backend="bm25", corpus=corpus, port=0, cache={"dir": cache, "mode": "off"})
    with start_proxy(settings, port=0) as running:
        yield running


@pytest.fixture()
def client(proxy):
    return CountingClient(ProxySearcher(proxy.url, timeout_s=10.0, retries=0))


@pytest.fixture(scope="module")
def sr1(tok):
    return SearchR1Protocol(
        tok, prompt_template=PROMPT, observation_template=OBS, document_template=DOC, answer_probe="<answer>"
    )


def _ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_multi_turn_rollouts_hold_exactly_the_sampled_and_appended_ids(tok, sr1, client):
    scripts = {"Where is the tower?": [T_FRANCE, T_EIFFEL, T_PARIS], "Capital of Italy?": [T_ROME]}
    engine = ScriptedEngine(tok, scripts, sr1.stop_strings)
    prompts = [
        PromptItem("Where is the tower?", ["Paris"], {"id": 7}),
        PromptItem("Capital of Italy?", ["Rome"]),
    ]
    trajs = run_rollouts(engine, tok, sr1, client, prompts, n_samples=2, **LOOP)

    assert [(t.group_id, t.sample_id) for t in trajs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    segments = [
        PROMPT.format(question="Where is the tower?"),
        T_FRANCE,
        OBS_FRANCE,
        T_EIFFEL,
        OBS_EIFFEL,
        T_PARIS,
    ]
    seg_ids = [_ids(tok, s) for s in segments]
    ends = [sum(len(s) for s in seg_ids[: k + 1]) for k in range(len(seg_ids))]
    for t in trajs[:2]:
        assert t.token_ids == [i for s in seg_ids for i in s]
        assert t.prompt_len == ends[0]
        assert t.turn_spans == [(ends[0], ends[1]), (ends[2], ends[3]), (ends[4], ends[5])]
        assert t.obs_spans == [(ends[1], ends[2]), (ends[3], ends[4])]
        assert t.belief_points == [ends[0], ends[2], ends[4]]
        mask = [0] * ends[0] + [1] * len(seg_ids[1]) + [0] * len(seg_ids[2]) + [1] * len(seg_ids[3])
        mask += [0] * len(seg_ids[4]) + [1] * len(seg_ids[5])
        assert t.action_mask == mask
        assert (t.finish_reason, t.answer, t.n_searches, t.n_search_errors) == ("answer", "Paris", 2, 0)
        assert [a.kind for a in t.actions] == ["search", "search", "answer"]
        assert t.meta == {"id": 7} and t.golds == ["Paris"]
    p, rome = _ids(tok, PROMPT.format(question="Capital of Italy?")), _ids(tok, T_ROME)
    for t in trajs[2:]:
        assert t.token_ids == p + rome
        assert (t.turn_spans, t.obs_spans, t.belief_points) == ([(len(p), len(p) + len(rome))], [], [len(p)])
        assert (t.finish_reason, t.answer, t.n_searches) == ("answer", "Rome", 0)
    # One search request per round holding every pending query: round 1 both samples of question 0, round 2 again.
    assert client.requests == [["capital of France"] * 2, ["Eiffel Tower built"] * 2]
    # Round 1 generated all four rollouts in one call; round 2 and 3 only the two still searching.
    assert [len(c["contexts"]) for c in engine.calls] == [4, 2, 2]
    assert sum(t.generate_seconds for t in trajs) > 0 and trajs[2].search_seconds == 0


def test_batch_size_splits_engine_calls_but_not_search_requests(tok, sr1, client):
    scripts = {f"Q{k}": [T_FRANCE, T_PARIS] for k in range(3)}
    engine = ScriptedEngine(tok, scripts, sr1.stop_strings)
    prompts = [PromptItem(q, ["Paris"]) for q in scripts]
    trajs = run_rollouts(engine, tok, sr1, client, prompts, n_samples=2, **{**LOOP, "batch_size": 4})
    assert [len(c["contexts"]) for c in engine.calls] == [4, 2, 4, 2]
    assert client.requests == [["capital of France"] * 6]
    assert all(t.finish_reason == "answer" for t in trajs)
    seeds = [c["seed"] for c in engine.calls]
    assert len(set(seeds)) == 4  # each engine call has its own seed


@pytest.mark.parametrize(
    "turn, error",
    [
        ("<think> hmm </think> <search> capital of", "unclosed <search>"),
        ("I will not follow the format.", "no <search> call"),
        ("<search> a </search> <answer> b </answer>", "both"),
        ("<search>  </search>", "empty query"),
    ],
)
def test_malformed_turn_ends_the_rollout_without_answer(tok, sr1, client, turn, error):
    engine = ScriptedEngine(tok, {"Q": [T_FRANCE, turn]}, sr1.stop_strings)
    (t,) = run_rollouts(engine, tok, sr1, client, [PromptItem("Q", ["Paris"])], n_samples=1, **LOOP)
    assert (t.finish_reason, t.answer, t.num_turns, len(t.obs_spans)) == ("invalid", None, 2, 1)
    assert t.actions[-1].kind == "invalid" and error in t.actions[-1].error
    assert t.belief_points == [t.prompt_len, t.obs_spans[0][1]]


def test_eos_without_answer(tok, sr1, client):
    engine = ScriptedEngine(tok, {"Q": ["<think> I give up </think><|im_end|>"]}, sr1.stop_strings)
    (t,) = run_rollouts(engine, tok, sr1, client, [PromptItem("Q", ["Paris"])], n_samples=1, **LOOP)
    assert (t.finish_reason, t.answer, t.num_turns) == ("eos", None, 1)
    assert t.token_ids[-1] == tok.eos_token_id


def test_max_turns_cuts_off_without_running_the_last_search(tok, sr1, client):
    engine = ScriptedEngine(tok, {"Q": [T_FRANCE, T_EIFFEL, T_FRANCE]}, sr1.stop_strings)
    (t,) = run_rollouts(
        engine, tok, sr1, client, [PromptItem("Q", ["Paris"])], n_samples=1, **{**LOOP, "max_turns": 2}
    )
    assert (t.finish_reason, t.answer, t.num_turns, t.n_searches) == ("max_turns", None, 2, 1)
    assert client.requests == [["capital of France"]]  # turn 2's search was not sent
    assert len(t.obs_spans) == 1 and t.turn_spans[-1][1] == len(t.token_ids)


def test_total_budget_caps_the_next_turn(tok, sr1, client):
    prompt = _ids(tok, PROMPT.format(question="Q"))
    first = len(prompt) + len(_ids(tok, T_FRANCE)) + len(_ids(tok, OBS_FRANCE))
    budget = first + 5  # five tokens left for turn 2, which wants more
    engine = ScriptedEngine(tok, {"Q": [T_FRANCE, T_EIFFEL]}, sr1.stop_strings)
    (t,) = run_rollouts(
        engine,
        tok,
        sr1,
        client,
        [PromptItem("Q", ["Paris"])],
        n_samples=1,
        **{**LOOP, "max_total_tokens": budget},
    )
    assert [c["budgets"] for c in engine.calls] == [[min(64, budget - len(prompt))], [5]]
    assert (t.finish_reason, len(t.token_ids), t.turn_spans[-1]) == ("max_length", budget, (first, budget))
    assert t.token_ids[first:] == _ids(tok, T_EIFFEL)[:5]


def test_observation_that_does_not_fit_is_not_appended(tok, sr1, client):
    prompt = _ids(tok, PROMPT.format(question="Q"))
    budget = (
        len(prompt) + len(_ids(tok, T_FRANCE)) + len(_ids(tok, OBS_FRANCE))
    )  # no room after the observation
    engine = ScriptedEngine(tok, {"Q": [T_FRANCE]}, sr1.stop_strings)
    (t,) = run_rollouts(
        engine,
        tok,
        sr1,
        client,
        [PromptItem("Q", ["Paris"])],
        n_samples=1,
        **{**LOOP, "max_total_tokens": budget},
    )
    assert (t.finish_reason, t.num_turns, t.obs_spans, t.n_searches) == ("max_length", 1, [], 0)
    assert t.token_ids == prompt + _ids(tok, T_FRANCE)


def test_observation_is_truncated_to_max_observation_tokens(tok, sr1, client):
    engine = ScriptedEngine(tok, {"Q": [T_EIFFEL, T_PARIS]}, sr1.stop_strings)
    (t,) = run_rollouts(
        engine,
        tok,
        sr1,
        client,
        [PromptItem("Q", ["Paris"])],
        n_samples=1,
        **{**LOOP, "max_observation_tokens": 14},
    )
    start, end = t.obs_spans[0]
    assert end - start == 14 < len(_ids(tok, OBS_EIFFEL))
    text = tok.decode(t.token_ids[start:end])
    assert text.startswith("\n\n<information>Doc 1") and text.endswith("</information>\n\n")
    assert t.finish_reason == "answer"


def test_dead_proxy_gives_error_observations_and_rollouts_go_on(tok, sr1, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(p) + "\n" for p in CORPUS), encoding="utf-8")
    settings = ProxySettings(backend="bm25", corpus=corpus, port=0, cache={"dir": tmp_path, "mode": "off"})
    with start_proxy(settings, port=0) as running:
        url = running.url
    # The proxy is stopped now: nothing listens at `url`.
    engine = ScriptedEngine(tok, {"Q": [T_FRANCE, T_PARIS]}, sr1.stop_strings)
    client = ProxySearcher(url, timeout_s=2.0, retries=0)
    trajs = run_rollouts(engine, tok, sr1, client, [PromptItem("Q", ["Paris"])], n_samples=2, **LOOP)
    for t in trajs:
        assert (t.finish_reason, t.answer, t.n_searches, t.n_search_errors) == ("answer", "Paris", 1, 1)
        obs = tok.decode(t.token_ids[slice(*t.obs_spans[0])])
        assert obs.startswith("\n\n<information>Search failed: ") and obs.endswith("</information>\n\n")


def test_tool_call_protocol_sends_every_query_of_a_call_in_one_request(tok, client):
    tc = ToolCallProtocol(
        tok, prompt_template="Question: {question}\n", document_template=DOC, answer_probe="<answer>"
    )
    call = '<think> two things </think>\n<tool_call>\n{"name": "search", "arguments": {"query_list": ["capital of France", "Tiber river"]}}\n</tool_call>'
    engine = ScriptedEngine(tok, {"Q": [call, T_PARIS]}, tc.stop_strings)
    (t,) = run_rollouts(engine, tok, tc, client, [PromptItem("Q", ["Paris"])], n_samples=1, **LOOP)
    assert client.requests == [["capital of France", "Tiber river"]]
    obs = (
        "<|im_end|>\n<|im_start|>user\n<tool_response>\nDoc 1(Title: Paris) Paris is the capital of France.\n"
        "Doc 1(Title: Tiber) The Tiber river flows through Rome.\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    assert t.token_ids == _ids(tok, tc.prompt_text("Q")) + _ids(tok, call) + _ids(tok, obs) + _ids(
        tok, T_PARIS
    )
    assert (t.finish_reason, t.answer) == ("answer", "Paris")


def test_prompt_too_long_is_an_error_naming_it(tok, sr1, client):
    engine = ScriptedEngine(tok, {}, sr1.stop_strings)
    with pytest.raises(ValueError, match=r"prompts\[0\] \('a very long question"):
        run_rollouts(
            engine,
            tok,
            sr1,
            client,
            [PromptItem("a very long question " * 20, ["x"])],
            n_samples=1,
            **{**LOOP, "max_total_tokens": 50},
        )


@pytest.mark.parametrize("name", ["n_samples", "max_turns", "batch_size", "max_observation_tokens"])
def test_bad_counts_are_errors(tok, sr1, client, name):
    kwargs = {**LOOP, "n_samples": 1, name: 0}
    with pytest.raises(ValueError, match=f"{name}=0"):
        run_rollouts(ScriptedEngine(tok, {}, []), tok, sr1, client, [PromptItem("Q", ["x"])], **kwargs)


class RecordingEngine:
    """The real HFEngine, with every call's contexts and generations kept for the checks."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def generate(self, contexts, **kwargs):
        gens = self.engine.generate(contexts, **kwargs)
        self.calls.append(([list(c) for c in contexts], kwargs["max_new_tokens"], gens))
        return gens


def test_real_hf_engine_plumbing(tok, sr1, client):
    """A tiny Qwen2, overfit here for a few seconds on one demonstration (search, observation, answer) so
    that it really searches, sampled through the loop: every turn span holds exactly the ids the engine
    sampled for that context, the rest is prompt/observation, budgets hold, the same seed gives the same
    rollouts and another seed other ones."""
    question = "Where is the tower?"
    model = make_model(tok, init_std=0.02)
    demo = [(PROMPT.format(question=question), False), (T_FRANCE, True), (OBS_FRANCE, False), (T_PARIS, True)]
    warm_start(model, tok, demo)
    kwargs = {**LOOP, "max_new_tokens": 40, "max_total_tokens": 160, "max_turns": 3}
    prompts = [PromptItem(question, ["Paris"])]
    engine = RecordingEngine(HFEngine(model, tok))
    trajs = run_rollouts(engine, tok, sr1, client, prompts, n_samples=4, **kwargs)
    sampled = Counter()  # (context, sampled ids) of every row the engine generated
    for contexts, budgets, gens in engine.calls:
        for ctx, budget, gen in zip(contexts, budgets, gens, strict=True):
            assert 1 <= len(gen.token_ids) <= min(budget, 40)
            sampled[(tuple(ctx), tuple(gen.token_ids))] += 1
    assert len(trajs) == 4
    for t in trajs:
        t.validate()
        assert len(t.token_ids) <= 160 and t.num_turns <= 3
        assert t.token_ids[: t.prompt_len] == _ids(tok, PROMPT.format(question=question))
        for start, end in t.turn_spans:  # each turn is one row the engine sampled for exactly that context
            row = (tuple(t.token_ids[:start]), tuple(t.token_ids[start:end]))
            assert sampled[row] > 0
            sampled[row] -= 1
        for (_, turn_end), (start, end) in zip(t.turn_spans, t.obs_spans, strict=False):
            obs = tok.decode(t.token_ids[start:end])
            assert (
                start == turn_end
                and obs.startswith("\n\n<information>")
                and obs.endswith("</information>\n\n")
            )
        assert sum(t.action_mask) == sum(e - s for s, e in t.turn_spans)
    assert sum(sampled.values()) == 0  # and every sampled row is in a trajectory
    assert any(t.n_searches >= 1 for t in trajs)  # the warm-started model really searched
    again = run_rollouts(HFEngine(model, tok), tok, sr1, client, prompts, n_samples=4, **kwargs)
    assert [t.token_ids for t in again] == [t.token_ids for t in trajs]
    other = run_rollouts(
        HFEngine(model, tok), tok, sr1, client, prompts, n_samples=4, **{**kwargs, "seed": 1}
    )
    assert [t.token_ids for t in other] != [t.token_ids for t in trajs]
