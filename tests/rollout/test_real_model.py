"""Both rollout protocols with the real pretrained model (SmolLM2-135M-Instruct) and the real search proxy over
the shipped Wikipedia corpus, on HotpotQA questions.

Zero-shot the model does not use the search protocol, so the prompts here show it one example call; with
greedy decoding it then searches on these questions (asserted: the observation path is exercised). The checks:
the trajectory's ids are exactly the prompt ids, the ids the engine returned (recorded as they leave it) and
the observation ids; each observation is what the protocol renders for the proxy's answer to the turn's
parsed queries; with `tool_call` the context is exactly the chat template's rendering of the conversation,
the observation a `tool` message (SmolLM2's template ignores `tools`, so the schema is in the system message).
"""

from __future__ import annotations

import pytest

from igpo_rlhf.data.datasets import read_file
from igpo_rlhf.models.loading import load_causal_lm, load_tokenizer
from igpo_rlhf.rollout.agent_loop import run_rollouts
from igpo_rlhf.rollout.engine import HFEngine
from igpo_rlhf.rollout.protocols import SearchR1Protocol, ToolCallProtocol
from igpo_rlhf.rollout.searcher import ProxySearcher
from services.search_proxy.launch import start_proxy
from services.search_proxy.settings import ProxySettings
from tests.models.smollm2 import CORPUS, HOTPOTQA, smollm2_dir

pytestmark = pytest.mark.real_model

DOC = "Doc {rank}(Title: {title}) {text}\n"
SEARCH_R1_PROMPT = (
    "Question: Who wrote Hamlet?\n<search> Hamlet author </search>\n\n"
    "Question: In which city is the Eiffel Tower?\n<search> Eiffel Tower city </search>\n\nQuestion: {question}\n"
)
TOOL_CALL_PROMPT = (
    'Example:\nQuestion: Who wrote Hamlet?\nReply: <tool_call>\n{"name": "search", "arguments": {"query_list": '
    '["Hamlet author"]}}\n</tool_call>\n\nQuestion: {question}\nReply:'
)
LOOP = dict(n_samples=1, max_turns=2, max_total_tokens=1024, max_observation_tokens=120, search_top_k=1,
            temperature=0.0, top_p=1.0, top_k=-1, batch_size=8, seed=0)  # fmt: skip


class RecordingEngine:
    """The real HFEngine; remembers the ids of every generation as it returns them."""

    def __init__(self, engine: HFEngine) -> None:
        self.engine, self.generated = engine, []

    def generate(self, contexts, **kwargs):
        out = self.engine.generate(contexts, **kwargs)
        self.generated += [g.token_ids for g in out]
        return out


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(smollm2_dir())


@pytest.fixture(scope="module")
def engine(tok):
    return HFEngine(load_causal_lm(smollm2_dir()), tok)


@pytest.fixture(scope="module")
def searcher(tmp_path_factory):
    settings = ProxySettings(backend="bm25", corpus=CORPUS, port=0,
                             cache={"dir": tmp_path_factory.mktemp("cache"), "mode": "off"})  # fmt: skip
    with start_proxy(settings, port=0) as running:
        yield ProxySearcher(running.url, timeout_s=30.0, retries=1)


def roll(engine, tok, protocol, searcher, n_questions: int, max_new_tokens: int, **loop):
    recording = RecordingEngine(engine)
    items = read_file(HOTPOTQA)[:n_questions]
    trajs = run_rollouts(
        recording, tok, protocol, searcher, items, max_new_tokens=max_new_tokens, **(LOOP | loop)
    )
    return trajs, recording.generated


def check_layout(traj, protocol, searcher, generated, max_observation_tokens: int) -> None:
    """ids = prompt ids + (sampled ids + observation ids)* with every piece where the spans say."""
    ids = traj.token_ids
    assert ids[: traj.prompt_len] == protocol.prompt_ids(traj.question)
    pieces = sorted([(s, e, "turn") for s, e in traj.turn_spans] + [(s, e, "obs") for s, e in traj.obs_spans])
    assert pieces[0][0] == traj.prompt_len and pieces[-1][1] == len(ids)
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))  # contiguous, nothing between
    for k, (start, end) in enumerate(traj.turn_spans):
        assert ids[start:end] in generated  # exactly the ids the engine returned, not re-tokenised text
        action = protocol.parse(protocol.tokenizer.decode(ids[start:end], skip_special_tokens=False))
        assert action == traj.actions[k]
        if k < len(traj.obs_spans):
            assert action.kind == "search"
            o_start, o_end = traj.obs_spans[k]
            assert o_start == end
            hits = searcher.search(list(action.queries), LOOP["search_top_k"])
            assert ids[o_start:o_end] == protocol.observation_ids(
                hits, max_tokens=max_observation_tokens, queries=list(action.queries)
            )


def test_search_r1_with_a_plain_prompt(tok, engine, searcher):
    protocol = SearchR1Protocol(tok, prompt_template=SEARCH_R1_PROMPT, observation_template="\n<information>{documents}</information>\n",
                                document_template=DOC, answer_probe="<answer>")  # fmt: skip
    assert protocol.prompt_ids("Who?") == tok.encode(SEARCH_R1_PROMPT.replace("{question}", "Who?"))
    trajs, generated = roll(engine, tok, protocol, searcher, n_questions=2, max_new_tokens=32)
    assert sum(t.n_searches for t in trajs) >= 1, [tok.decode(t.token_ids[t.prompt_len :]) for t in trajs]
    for traj in trajs:
        check_layout(traj, protocol, searcher, generated, LOOP["max_observation_tokens"])
        traj.validate()


def test_tool_call_through_the_real_chat_template(tok, engine, searcher):
    protocol = ToolCallProtocol(
        tok, prompt_template=TOOL_CALL_PROMPT, document_template=DOC, answer_probe="<answer>"
    )
    assert not protocol.template_renders_tools and '"query_list"' in protocol.system_prompt
    # observations long enough for whole passages, so the rendering below is compared exactly (nothing cut)
    trajs, generated = roll(
        engine, tok, protocol, searcher, n_questions=2, max_new_tokens=80, max_observation_tokens=400
    )
    searched = [t for t in trajs if t.n_searches]
    assert searched, [tok.decode(t.token_ids[t.prompt_len :]) for t in trajs]
    for traj in trajs:
        check_layout(traj, protocol, searcher, generated, 400)
    # the context after a search is the chat template's own rendering of the conversation, the passages a tool message
    traj = searched[0]
    (t_start, t_end), (o_start, o_end) = traj.turn_spans[0], traj.obs_spans[0]
    turn = tok.decode(traj.token_ids[t_start:t_end], skip_special_tokens=False)
    hits = searcher.search(list(traj.actions[0].queries), LOOP["search_top_k"])
    passages = "".join(
        DOC.format(rank=r + 1, title=h["title"], text=h["text"])
        for hits_q in hits
        for r, h in enumerate(hits_q)
    )
    conversation = [
        {"role": "system", "content": protocol.system_prompt},
        {"role": "user", "content": TOOL_CALL_PROMPT.replace("{question}", traj.question)},
        {"role": "assistant", "content": turn},
        {"role": "tool", "content": passages.rstrip("\n")},
    ]
    rendered = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert tok.decode(traj.token_ids[:o_end], skip_special_tokens=False) == rendered
    assert tok.decode(traj.token_ids[o_start:o_end], skip_special_tokens=False).startswith(
        "<|im_end|>\n<|im_start|>tool\n"
    )
