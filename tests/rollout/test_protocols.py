"""Protocols: prompt rendering, turn parsing, observations (expected strings written out by hand)."""

from __future__ import annotations

import pytest

from igpo_rlhf.rollout.protocols import SEARCH_TOOL, Action, SearchR1Protocol, ToolCallProtocol, make_protocol
from tests.rollout.tiny import make_tokenizer

OBS_TEMPLATE = "\n\n<information>{documents}</information>\n\n"
DOC_TEMPLATE = "Doc {rank}(Title: {title}) {text}\n"
HITS = [
    [
        {"id": "1", "title": "A", "text": "alpha", "score": 2.0},
        {"id": "2", "title": "B", "text": "beta", "score": 1.0},
    ],
    [{"id": "3", "title": "C", "text": "gamma", "score": 0.5}],
]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def sr1(tok):
    return SearchR1Protocol(
        tok,
        prompt_template="Answer it. Question: {question}\n",
        observation_template=OBS_TEMPLATE,
        document_template=DOC_TEMPLATE,
        answer_probe="<answer>",
    )


@pytest.fixture(scope="module")
def tc(tok):
    return ToolCallProtocol(
        tok, prompt_template="Question: {question}", document_template=DOC_TEMPLATE, answer_probe="<answer>"
    )


# ------------------------------------------------------------------------------------------- prompts
def test_search_r1_prompt_is_the_template_with_the_question(sr1, tok):
    assert sr1.prompt_text("who is {x}?") == "Answer it. Question: who is {x}?\n"
    assert sr1.prompt_ids("who?") == tok.encode("Answer it. Question: who?\n")
    assert sr1.stop_strings == ["</search>", "</answer>"]


def test_search_r1_prompt_inside_the_chat_template(tok):
    p = SearchR1Protocol(
        tok,
        prompt_template="Q: {question}",
        observation_template=OBS_TEMPLATE,
        document_template=DOC_TEMPLATE,
        answer_probe="<answer>",
        use_chat_template=True,
        system_prompt="Be brief.",
    )
    assert p.prompt_text("why?") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ: why?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tool_call_prompt_lists_the_search_tool(tc):
    text = tc.prompt_text("why?")
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools")
    assert '"name": "search"' in text and '"query_list"' in text
    assert text.endswith("<|im_start|>user\nQuestion: why?<|im_end|>\n<|im_start|>assistant\n")
    assert tc.stop_strings == ["</tool_call>", "</answer>"]


# ------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    "text, kind, queries, answer, error",
    [
        (
            "<think> I need it </think>\n<search> capital of France </search>",
            "search",
            ("capital of France",),
            None,
            None,
        ),
        ("noise before <search>q</search> noise after", "search", ("q",), None, None),
        ("<search> a </search>\n<search> b </search>", "search", ("a", "b"), None, None),
        ("<think> x </think> <answer> Paris </answer>", "answer", (), "Paris", None),
        ("<answer> Rome </answer> then <answer> Paris </answer>", "answer", (), "Paris", None),
        (
            "<think> maybe <search> x </search> or <answer> y </answer> </think> <answer> Oslo </answer>",
            "answer",
            (),
            "Oslo",
            None,
        ),
        ("<search>   </search>", "invalid", (), None, "empty query"),
        ("<think> hm </think> <search> capital of", "invalid", (), None, "unclosed <search>"),
        ("<search> a <search> b </search>", "invalid", (), None, "nested <search>"),
        ("<search> q </search> <answer> a </answer>", "invalid", (), None, "both"),
        ("<answer>   </answer>", "invalid", (), None, "malformed <answer>"),
        ("<answer> Paris", "invalid", (), None, "malformed <answer>"),
        ("Paris </answer>", "invalid", (), None, "malformed <answer>"),
        ("<think> just thinking </think>", "invalid", (), None, "no <search> call and no <answer>"),
    ],
)
def test_search_r1_parse(sr1, text, kind, queries, answer, error):
    action = sr1.parse(text)
    assert (action.kind, action.queries, action.answer) == (kind, queries, answer)
    if error is None:
        assert action.error is None
    else:
        assert error in action.error


def _call(args: str) -> str:
    return f'<tool_call>\n{{"name": "search", "arguments": {args}}}\n</tool_call>'


@pytest.mark.parametrize(
    "text, kind, queries, error",
    [
        ("<think> t </think>\n" + _call('{"query_list": ["a b", "c"]}'), "search", ("a b", "c"), None),
        (_call('{"query_list": ["a"]}') + "\n" + _call('{"query_list": ["b"]}'), "search", ("a", "b"), None),
        (
            '<tool_call>\n{"name": "search", "arguments": {"query_list": ["a"\n</tool_call>',
            "invalid",
            (),
            "not valid JSON",
        ),
        (
            '<tool_call>{"name": "lookup", "arguments": {"query_list": ["a"]}}</tool_call>',
            "invalid",
            (),
            "unknown tool 'lookup'",
        ),
        ('<tool_call>["search"]</tool_call>', "invalid", (), "unknown tool None"),
        (_call('{"query": "a"}'), "invalid", (), "query_list"),
        (_call('{"query_list": []}'), "invalid", (), "non-empty list"),
        (_call('{"query_list": "a"}'), "invalid", (), "non-empty list"),
        (_call('{"query_list": ["a", " "]}'), "invalid", (), "every query must be a non-empty string"),
        (_call('{"query_list": ["a", 3]}'), "invalid", (), "every query must be a non-empty string"),
        (
            '<tool_call>\n{"name": "search", "arguments": {"query_list": ["a"]}}',
            "invalid",
            (),
            "unclosed <tool_call>",
        ),
        (_call('{"query_list": ["a"]}') + " <answer> x </answer>", "invalid", (), "both"),
        ("I do not know.", "invalid", (), "no <tool_call> call"),
    ],
)
def test_tool_call_parse(tc, text, kind, queries, error):
    action = tc.parse(text)
    assert (action.kind, action.queries) == (kind, queries)
    if error is None:
        assert action.error is None
    else:
        assert error in action.error, action.error


def test_tool_call_answer(tc):
    assert tc.parse("<think> known </think>\n<answer> Ada Lovelace </answer>") == Action(
        kind="answer", answer="Ada Lovelace"
    )


def test_parse_rejects_non_text(sr1):
    with pytest.raises(ValueError, match="expected the decoded turn as a str"):
        sr1.parse([1, 2, 3])


# -------------------------------------------------------------------------------------- observations
def test_search_r1_observation_text(sr1):
    assert sr1.observation_text(HITS) == (
        "\n\n<information>Doc 1(Title: A) alpha\nDoc 2(Title: B) beta\nDoc 1(Title: C) gamma\n</information>\n\n"
    )
    assert sr1.observation_text([[], []]) == "\n\n<information>No results found.\n</information>\n\n"
    assert sr1.observation_text(None, "proxy unreachable") == (
        "\n\n<information>Search failed: proxy unreachable\n</information>\n\n"
    )
    with pytest.raises(ValueError, match="neither"):
        sr1.observation_text(None)


def test_document_template_may_show_the_query(tok):
    p = SearchR1Protocol(
        tok,
        prompt_template="{question}",
        observation_template="[{documents}]",
        document_template="{query}#{rank}:{title}|",
        answer_probe="<answer>",
    )
    assert p.observation_text(HITS, queries=["qa", "qc"]) == "[qa#1:A|qa#2:B|qc#1:C|]"


def test_tool_call_observation_is_the_chat_template_delta(tc, tok):
    """prompt + turn + observation must equal the chat template's rendering of the whole conversation."""
    turn = tc.demo_turn_text(think="look it up", queries=["alpha"])
    obs = tc.observation_text(HITS[:1])
    assert obs == (
        "<|im_end|>\n<|im_start|>user\n<tool_response>\nDoc 1(Title: A) alpha\nDoc 2(Title: B) beta\n"
        "</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    conversation = [
        {"role": "user", "content": "Question: why?"},
        {"role": "assistant", "content": turn},
        {"role": "tool", "name": "search", "content": "Doc 1(Title: A) alpha\nDoc 2(Title: B) beta"},
    ]
    rendered = tok.apply_chat_template(
        conversation, tools=[SEARCH_TOOL], tokenize=False, add_generation_prompt=True
    )
    assert tc.prompt_text("why?") + turn + obs == rendered


def test_observation_ids_truncate_passages_and_keep_the_framing(sr1, tok):
    assert sr1.observation_ids(HITS) == tok.encode(sr1.observation_text(HITS), add_special_tokens=False)
    long_hits = [[{"title": "T", "text": "fox " * 200}]]
    ids = sr1.observation_ids(long_hits, max_tokens=40)
    assert len(ids) == 40
    text = tok.decode(ids)
    assert text.startswith("\n\n<information>Doc 1(Title: T) fox")
    assert text.endswith("</information>\n\n")
    framing = len(tok.encode("\n\n<information>")) + len(tok.encode("</information>\n\n"))
    with pytest.raises(ValueError, match="max_observation_tokens=.*no room"):
        sr1.observation_ids(long_hits, max_tokens=framing)


def test_tool_call_observation_truncated_keeps_next_assistant_header(tc, tok):
    ids = tc.observation_ids([[{"title": "T", "text": "fox " * 200}]], max_tokens=60)
    assert len(ids) == 60
    assert tok.decode(ids).endswith("\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "results, message",
    [
        ("nope", "expected a list"),
        ([{"title": "a"}], r"results\[0\] is a dict"),
        ([[{"title": "a"}]], r"results\[0\]\[0\]"),
    ],
)
def test_bad_results_are_errors(sr1, results, message):
    with pytest.raises(ValueError, match=message):
        sr1.observation_text(results)


# --------------------------------------------------------------------------------------- demo turns
def test_demo_turns_parse_back(sr1, tc):
    assert sr1.demo_turn_text(think="t", queries=["who"]) == "<think> t </think>\n<search> who </search>"
    assert sr1.parse(sr1.demo_turn_text(think="t", answer="Bob")) == Action(kind="answer", answer="Bob")
    assert tc.demo_turn_text(think="t", queries=["a", "b"]) == (
        '<think> t </think>\n<tool_call>\n{"name": "search", "arguments": {"query_list": ["a", "b"]}}\n</tool_call>'
    )
    assert tc.parse(tc.demo_turn_text(think="t", queries=["a", "b"])).queries == ("a", "b")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"think": "t"}, "exactly one"),
        ({"think": "t", "queries": ["a"], "answer": "b"}, "exactly one"),
        ({"think": "t", "queries": []}, "non-empty list"),
        ({"think": "t", "answer": " "}, "non-empty string"),
        ({"think": "t", "queries": ["a", "b"]}, "one query per turn"),
    ],
)
def test_demo_turn_errors(sr1, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sr1.demo_turn_text(**kwargs)


# ------------------------------------------------------------------------------------ config errors
def test_bad_templates_are_errors(tok):
    with pytest.raises(ValueError, match="observation_template must contain '{documents}'"):
        SearchR1Protocol(
            tok,
            prompt_template="{question}",
            observation_template="<i></i>",
            document_template=DOC_TEMPLATE,
            answer_probe="<answer>",
        )
    with pytest.raises(ValueError, match=r"document_template .* accepted fields: \{rank\}"):
        SearchR1Protocol(
            tok,
            prompt_template="{question}",
            observation_template=OBS_TEMPLATE,
            document_template="{url}",
            answer_probe="<answer>",
        )


def test_tool_call_needs_a_chat_template():
    tok = make_tokenizer()
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        ToolCallProtocol(
            tok, prompt_template="{question}", document_template=DOC_TEMPLATE, answer_probe="<answer>"
        )


def test_empty_question_is_an_error(sr1):
    with pytest.raises(ValueError, match="question '  ' must be a non-empty string"):
        sr1.prompt_text("  ")


def test_make_protocol_from_the_config(tok):
    from igpo_rlhf.config import SEARCH_R1_PROMPT, RolloutConfig

    p = make_protocol(RolloutConfig(), tok, "<answer>")
    assert isinstance(p, SearchR1Protocol)
    assert p.prompt_text("Who?") == SEARCH_R1_PROMPT.replace("{question}", "Who?")
    assert p.answer_probe_text == "<answer>"
    with pytest.raises(ValueError, match="set rollout.use_chat_template=true"):
        make_protocol(RolloutConfig(protocol="tool_call"), tok, "<answer>")
    tc = make_protocol(
        RolloutConfig(protocol="tool_call", use_chat_template=True, system_prompt="S."), tok, "<ans>"
    )
    assert isinstance(tc, ToolCallProtocol) and tc.answer_probe_text == "<ans>"
    assert tc.prompt_text("Who?").startswith("<|im_start|>system\nS.\n\n# Tools")


# ------------------------------------------------------------------ a chat template that ignores `tools`
SMOLLM2_LIKE_TEMPLATE = (  # SmolLM2-Instruct's template: no tools, a default system message, every role verbatim
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are SmolLM.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def no_tools_tok():
    tok = make_tokenizer()
    tok.chat_template = SMOLLM2_LIKE_TEMPLATE
    return tok


def test_a_template_that_ignores_tools_gets_the_schema_in_the_system_message(no_tools_tok, tok):
    from igpo_rlhf.rollout.protocols import template_renders_tools

    assert template_renders_tools(tok) and not template_renders_tools(no_tools_tok)
    p = ToolCallProtocol(no_tools_tok, prompt_template="Q: {question}", document_template=DOC_TEMPLATE,
                         answer_probe="<answer>", system_prompt="Be brief.")  # fmt: skip
    schema = (
        '{"name": "search", "description": "Search a passage corpus. Returns the top passages for each query.", '
        '"parameters": {"type": "object", "properties": {"query_list": {"type": "array", "items": {"type": '
        '"string"}, "description": "One or more search queries."}}, "required": ["query_list"]}}'
    )
    assert p.prompt_text("why?") == (
        "<|im_start|>system\nBe brief.\n\n"
        "You can call tools. Each tool is described by a JSON schema inside <tools></tools>:\n"
        f"<tools>\n{schema}\n</tools>\n"
        "To call a tool, write one JSON object with the tool's name and arguments inside <tool_call></tool_call>:\n"
        '<tool_call>\n{"name": "search", "arguments": {"query_list": ["your query"]}}\n</tool_call>\n'
        "The tool's result comes back in the next message.<|im_end|>\n"
        "<|im_start|>user\nQ: why?<|im_end|>\n<|im_start|>assistant\n"
    )
    # the syntax the model is told to use is the one parsed
    told = '<tool_call>\n{"name": "search", "arguments": {"query_list": ["your query"]}}\n</tool_call>'
    assert p.parse(told) == Action(kind="search", queries=("your query",))
    # an observation is a tool message: the template's rendering of the whole conversation, delta by delta
    turn = p.demo_turn_text(think="look it up", queries=["alpha"])
    obs = p.observation_text(HITS[:1])
    assert obs == (
        "<|im_end|>\n<|im_start|>tool\nDoc 1(Title: A) alpha\nDoc 2(Title: B) beta<|im_end|>\n<|im_start|>assistant\n"
    )
    conversation = [
        {"role": "system", "content": p.system_prompt},
        {"role": "user", "content": "Q: why?"},
        {"role": "assistant", "content": turn},
        {"role": "tool", "name": "search", "content": "Doc 1(Title: A) alpha\nDoc 2(Title: B) beta"},
    ]
    rendered = no_tools_tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert p.prompt_text("why?") + turn + obs == rendered
    # without a configured system prompt the schema is the whole system message (no default one)
    bare = ToolCallProtocol(no_tools_tok, prompt_template="{question}", document_template=DOC_TEMPLATE,
                            answer_probe="<answer>")  # fmt: skip
    assert bare.prompt_text("x").startswith("<|im_start|>system\nYou can call tools.")
