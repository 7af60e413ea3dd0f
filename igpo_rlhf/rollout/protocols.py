"""Agent protocols: how a prompt, a generated turn and a search observation look as text.

Two protocols, chosen by `rollout.protocol`; prompt, observation and passage templates come from the
config, never from code.

- `search_r1` (Search-R1 tags): a turn is `<think> ... </think>` then either `<search> query </search>`
  or `<answer> ... </answer>`; the observation after a search is `rollout.observation_template` around
  the passages rendered with `rollout.document_template`.
- `tool_call` (the IGPO paper's DeepResearcher setup): the tokenizer's chat template with a `search` tool
  taking a list of queries. A search turn holds a Qwen2.5-style call
  `<tool_call>\\n{"name": "search", "arguments": {"query_list": [...]}}\\n</tool_call>`; the observation is
  the passages rendered as a tool message by the chat template: the text the template adds after the
  assistant's content (end of the assistant turn, the tool message, the next assistant header). The
  answer is `<answer> ... </answer>` inside the assistant turn. A chat template that does not render a
  `tools` list (SmolLM2's: the prompt is the same with and without tools) gets the tool schema and the
  call syntax from us, in the system message (`TOOLS_SYSTEM_TEMPLATE`, after `rollout.system_prompt`).

Parsing rules (both protocols; a rule that fails gives `Action(kind="invalid", error=...)`):
- `<think>...</think>` blocks are reasoning: tags inside them are not actions. A missing think block is
  allowed (Search-R1's parser does not require it either).
- A turn must hold either search call(s) or an answer, not both: both is invalid (the policy must choose;
  the rollout cannot both search and stop).
- Several complete search calls in one turn are one search with all their queries (in order). Engines stop
  at the first closing tag, so this only happens with text from elsewhere.
- An empty query, an unclosed or nested tag, a tool call that is not JSON or not
  `{"name": "search", "arguments": {"query_list": [non-empty str, ...]}}` is invalid.
- The answer is `igpo_rlhf.rewards.extract_answer` of the turn (the last well-formed `<answer>...</answer>`,
  non-blank), so rollout and reward agree on what a well-formed answer is.

Token layout (what the agent loop appends, and what demonstrations should reproduce): the prompt is
`prompt_ids(q)`; every generated turn is the sampled ids (for a demonstration: the turn text tokenised on
its own, `add_special_tokens=False`); every observation is `observation_ids(results, error, max_tokens=...)`,
tokenised on its own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from igpo_rlhf.rewards import extract_answer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from igpo_rlhf.config import RolloutConfig

PROTOCOLS = ("search_r1", "tool_call")

# The `search` tool as the chat template shows it to the model (JSON schema, OpenAI function format).
SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search a passage corpus. Returns the top passages for each query.",
        "parameters": {
            "type": "object",
            "properties": {
                "query_list": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "One or more search queries.",
                }
            },
            "required": ["query_list"],
        },
    },
}

# The tool schema and the call syntax, for chat templates that do not render a `tools` list themselves;
# `{tools}` is the JSON schema of each tool, one per line. The syntax is the one `parse` reads.
TOOLS_SYSTEM_TEMPLATE = (
    "You can call tools. Each tool is described by a JSON schema inside <tools></tools>:\n"
    "<tools>\n{tools}\n</tools>\n"
    "To call a tool, write one JSON object with the tool's name and arguments inside <tool_call></tool_call>:\n"
    '<tool_call>\n{{"name": "search", "arguments": {{"query_list": ["your query"]}}}}\n</tool_call>\n'
    "The tool's result comes back in the next message."
)

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_SEARCH_BLOCK = re.compile(r"<search>(.*?)</search>", re.DOTALL)
_TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_MARK = "\x00igpo-mark\x00"  # marks where content goes when we render a chat template around it


@dataclass(frozen=True)
class Action:
    """What one generated turn asks for."""

    kind: Literal["search", "answer", "invalid"]
    queries: tuple[str, ...] = ()
    answer: str | None = None
    error: str | None = None  # why the turn is invalid (for logs and the rollout viewer)


class AgentProtocol(Protocol):
    """What the agent loop and the demonstration renderer need from a protocol."""

    name: str
    stop_strings: list[str]
    answer_probe_text: str

    def prompt_text(self, question: str) -> str: ...
    def prompt_ids(self, question: str) -> list[int]: ...
    def parse(self, turn_text: str) -> Action: ...
    def observation_text(
        self, results: list[list[dict]] | None, error: str | None = None, queries: list[str] | None = None
    ) -> str: ...
    def observation_ids(
        self,
        results: list[list[dict]] | None,
        error: str | None = None,
        *,
        max_tokens: int | None = None,
        queries: list[str] | None = None,
    ) -> list[int]: ...
    def demo_turn_text(
        self, *, think: str, queries: list[str] | None = None, answer: str | None = None
    ) -> str: ...


# ------------------------------------------------------------------------------------------------ parse
def _invalid(error: str) -> Action:
    return Action(kind="invalid", error=error)


def _parse_turn(turn_text: str, call_block: re.Pattern, call_tag: str, read_call) -> Action:
    """Shared turn grammar of both protocols: `read_call(body)` turns one call's body into queries
    (or raises ValueError saying what is wrong with it)."""
    if not isinstance(turn_text, str):
        raise ValueError(f"turn_text is a {type(turn_text).__name__}; expected the decoded turn as a str")
    text = _THINK_BLOCK.sub(" ", turn_text)
    bodies = call_block.findall(text)
    has_answer = "<answer>" in text or "</answer>" in text
    if bodies and has_answer:
        return _invalid(f"the turn holds both a {call_tag} call and an <answer>; a turn does one of them")
    if has_answer:
        answer = extract_answer(text)
        if answer is None:
            return _invalid("malformed <answer>: unclosed, nested, stray closing tag or empty")
        return Action(kind="answer", answer=answer)
    if not bodies:
        if f"<{call_tag}>" in text:
            return _invalid(f"unclosed <{call_tag}> tag")
        return _invalid(f"no <{call_tag}> call and no <answer> in the turn")
    queries: list[str] = []
    for k, body in enumerate(bodies):
        if f"<{call_tag}>" in body:
            return _invalid(f"nested <{call_tag}> tags in call {k + 1}")
        try:
            queries.extend(read_call(body))
        except ValueError as exc:
            return _invalid(f"{call_tag} call {k + 1}: {exc}")
    return Action(kind="search", queries=tuple(queries))


def _read_search_r1_call(body: str) -> list[str]:
    query = body.strip()
    if not query:
        raise ValueError("empty query")
    return [query]


def _read_tool_call(body: str) -> list[str]:
    try:
        call = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at char {exc.pos}): {body.strip()[:200]!r}") from None
    if not isinstance(call, dict) or call.get("name") != "search":
        name = call.get("name") if isinstance(call, dict) else None
        raise ValueError(f"unknown tool {name!r}; the only tool is 'search'")
    args = call.get("arguments")
    if not isinstance(args, dict) or "query_list" not in args:
        raise ValueError(f'arguments must be {{"query_list": [str, ...]}}, got {args!r}')
    query_list = args["query_list"]
    if not isinstance(query_list, list) or not query_list:
        raise ValueError(f"query_list must be a non-empty list of strings, got {query_list!r}")
    queries = []
    for q in query_list:
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"query_list holds {q!r}; every query must be a non-empty string")
        queries.append(q.strip())
    return queries


# --------------------------------------------------------------------------------------- observations
def _render_documents(results: list[list[dict]], document_template: str, queries: list[str] | None) -> str:
    """Passages of every query, each through `document_template` ({rank} counts from 1 within a query)."""
    if not isinstance(results, list):
        raise ValueError(f"results is a {type(results).__name__}; expected a list (one hit list per query)")
    parts = []
    for k, hits in enumerate(results):
        if not isinstance(hits, list):
            raise ValueError(f"results[{k}] is a {type(hits).__name__}; expected a list of hit dicts")
        query = queries[k] if queries is not None and k < len(queries) else ""
        for rank, hit in enumerate(hits, start=1):
            if not isinstance(hit, dict) or "text" not in hit:
                raise ValueError(
                    f"results[{k}][{rank - 1}] is {hit!r}; expected a dict with 'title' and 'text'"
                )
            parts.append(
                document_template.format(rank=rank, title=hit.get("title", ""), text=hit["text"], query=query)
            )
    return "".join(parts) if parts else "No results found.\n"


def _error_body(error: str) -> str:
    return f"Search failed: {error}\n"


def _check_document_template(document_template: str) -> None:
    try:
        document_template.format(rank=1, title="t", text="x", query="q")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"rollout.document_template {document_template!r} does not format ({exc!r}); "
            "accepted fields: {rank}, {title}, {text}, {query}"
        ) from None


def _split_at(text: str, mark: str, what: str) -> tuple[str, str]:
    if text.count(mark) != 1:
        raise ValueError(f"{what} must contain {mark!r} exactly once, got {text!r}")
    head, tail = text.split(mark)
    return head, tail


def _observation_ids(
    tokenizer: PreTrainedTokenizerBase, head: str, body: str, tail: str, max_tokens: int | None
) -> list[int]:
    """Token ids of head + body + tail; over `max_tokens`, the body is cut (head and tail kept whole)."""
    ids = tokenizer.encode(head + body + tail, add_special_tokens=False)
    if max_tokens is None or len(ids) <= max_tokens:
        return ids
    tail_ids = tokenizer.encode(tail, add_special_tokens=False)
    head_ids = tokenizer.encode(head, add_special_tokens=False)
    room = max_tokens - len(tail_ids) - len(head_ids)
    if room < 1:
        raise ValueError(
            f"max_observation_tokens={max_tokens} leaves no room for passages: the observation framing "
            f"alone takes {len(head_ids) + len(tail_ids)} tokens; raise rollout.max_observation_tokens"
        )
    return tokenizer.encode(head + body, add_special_tokens=False)[: len(head_ids) + room] + tail_ids


def _check_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "the tokenizer has no chat template; set rollout.use_chat_template=false (search_r1) or use an "
            "instruct model's tokenizer"
        )


def template_renders_tools(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the chat template shows a `tools` list to the model (the prompt differs with and without)."""
    _check_chat_template(tokenizer)
    messages = [{"role": "user", "content": "q"}]
    with_tools, without = (
        tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
        for tools in ([SEARCH_TOOL], None)
    )
    return with_tools != without


def _chat_prompt(
    tokenizer: PreTrainedTokenizerBase, system_prompt: str | None, user: str, tools: list[dict] | None
) -> str:
    _check_chat_template(tokenizer)
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": user}
    ]
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)


def _fill_question(template: str, question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question {question!r} must be a non-empty string")
    return template.replace("{question}", question)


# ---------------------------------------------------------------------------------------- protocols
class _Observations:
    """Observation rendering shared by both protocols: `obs_head` + body + `obs_tail`, where the body is the
    rendered passages or the search error. Subclasses set tokenizer, document_template, obs_head, obs_tail."""

    # the tool message of a chat template holds the body without a trailing newline
    strip_body_newline = False

    def _parts(self, results, error, queries) -> tuple[str, str, str]:
        if results is None:
            if not error:
                raise ValueError("observation needs search results or an error message, got neither")
            body = _error_body(error)
        else:
            body = _render_documents(results, self.document_template, queries)
        if self.strip_body_newline:
            body = body.rstrip("\n")
        return self.obs_head, body, self.obs_tail

    def observation_text(
        self, results: list[list[dict]] | None, error: str | None = None, queries: list[str] | None = None
    ) -> str:
        """Text appended after a search turn: the passages (or the search error) framed as an observation."""
        return "".join(self._parts(results, error, queries))

    def observation_ids(
        self,
        results: list[list[dict]] | None,
        error: str | None = None,
        *,
        max_tokens: int | None = None,
        queries: list[str] | None = None,
    ) -> list[int]:
        """Token ids of observation_text, the passages cut so that it has at most `max_tokens` ids."""
        return _observation_ids(self.tokenizer, *self._parts(results, error, queries), max_tokens)


class SearchR1Protocol(_Observations):
    """Search-R1 tags: `<think>`, `<search> q </search>`, `<information>` observations, `<answer>`."""

    name = "search_r1"
    stop_strings = ["</search>", "</answer>"]

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        prompt_template: str,
        observation_template: str,
        document_template: str,
        answer_probe: str,
        use_chat_template: bool = False,
        system_prompt: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt_template = prompt_template
        self.obs_head, self.obs_tail = _split_at(observation_template, "{documents}", "observation_template")
        _check_document_template(document_template)
        self.document_template = document_template
        self.answer_probe_text = answer_probe
        self.use_chat_template = use_chat_template
        self.system_prompt = system_prompt
        if use_chat_template:
            _chat_prompt(tokenizer, system_prompt, "q", None)  # fail now, not on the first prompt

    def prompt_text(self, question: str) -> str:
        """The prompt: `prompt_template` with the question (inside the chat template when configured)."""
        user = _fill_question(self.prompt_template, question)
        return (
            _chat_prompt(self.tokenizer, self.system_prompt, user, None) if self.use_chat_template else user
        )

    def prompt_ids(self, question: str) -> list[int]:
        """Token ids of prompt_text; the tokenizer's BOS is added unless the chat template holds it."""
        return self.tokenizer.encode(
            self.prompt_text(question), add_special_tokens=not self.use_chat_template
        )

    def parse(self, turn_text: str) -> Action:
        """One generated turn → Action (rules in the module docstring)."""
        return _parse_turn(turn_text, _SEARCH_BLOCK, "search", _read_search_r1_call)

    def demo_turn_text(
        self, *, think: str, queries: list[str] | None = None, answer: str | None = None
    ) -> str:
        """A well-formed turn: think, then one `<search>` (search_r1 searches one query per turn) or the answer."""
        _check_demo(queries, answer)
        if queries is not None:
            if len(queries) != 1:
                raise ValueError(f"search_r1 searches one query per turn; got {len(queries)} queries")
            return f"<think> {think} </think>\n<search> {queries[0]} </search>"
        return f"<think> {think} </think>\n<answer> {answer} </answer>"


class ToolCallProtocol(_Observations):
    """The chat template's tool calls with a `search` tool over a list of queries (DeepResearcher style)."""

    name = "tool_call"
    strip_body_newline = True
    stop_strings = ["</tool_call>", "</answer>"]

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        prompt_template: str,
        document_template: str,
        answer_probe: str,
        system_prompt: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt_template = prompt_template
        _check_document_template(document_template)
        self.document_template = document_template
        self.answer_probe_text = answer_probe
        # tools rendered by the chat template, or (when it ignores them) by us in the system message
        self.template_renders_tools = template_renders_tools(tokenizer)
        if self.template_renders_tools:
            self.system_prompt, self.tools = system_prompt, [SEARCH_TOOL]
        else:
            schema = TOOLS_SYSTEM_TEMPLATE.format(
                tools=json.dumps(SEARCH_TOOL["function"], ensure_ascii=False)
            )
            self.system_prompt = f"{system_prompt}\n\n{schema}" if system_prompt else schema
            self.tools = None
        self.obs_head, self.obs_tail = self._tool_message_frame()

    def _tool_message_frame(self) -> tuple[str, str]:
        """Text the chat template puts after an assistant turn's content and around a tool message's content."""
        messages = [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": _MARK},
            {"role": "tool", "name": "search", "content": _MARK},
        ]
        text = self.tokenizer.apply_chat_template(
            messages, tools=self.tools, tokenize=False, add_generation_prompt=True
        )
        if text.count(_MARK) != 2:
            raise ValueError(
                "the tokenizer's chat template does not render assistant and tool message contents verbatim; "
                "rollout.protocol=tool_call needs a template with tool messages (e.g. Qwen2.5's)"
            )
        _, head, tail = text.split(_MARK)
        return head, tail

    def prompt_text(self, question: str) -> str:
        """The chat-template prompt: system message, tools, user message, assistant header (the tools in the
        system message when the template does not render them)."""
        user = _fill_question(self.prompt_template, question)
        return _chat_prompt(self.tokenizer, self.system_prompt, user, self.tools)

    def prompt_ids(self, question: str) -> list[int]:
        """Token ids of prompt_text (the chat template holds any BOS)."""
        return self.tokenizer.encode(self.prompt_text(question), add_special_tokens=False)

    def parse(self, turn_text: str) -> Action:
        """One generated turn → Action (rules in the module docstring)."""
        return _parse_turn(turn_text, _TOOL_CALL_BLOCK, "tool_call", _read_tool_call)

    def demo_turn_text(
        self, *, think: str, queries: list[str] | None = None, answer: str | None = None
    ) -> str:
        """A well-formed turn: think, then one tool call with every query, or the answer."""
        _check_demo(queries, answer)
        if queries is not None:
            call = json.dumps(
                {"name": "search", "arguments": {"query_list": list(queries)}}, ensure_ascii=False
            )
            return f"<think> {think} </think>\n<tool_call>\n{call}\n</tool_call>"
        return f"<think> {think} </think>\n<answer> {answer} </answer>"


def _check_demo(queries: list[str] | None, answer: str | None) -> None:
    if (queries is None) == (answer is None):
        raise ValueError("a demonstration turn has either queries or an answer (exactly one of them)")
    if queries is not None and (not queries or not all(isinstance(q, str) and q.strip() for q in queries)):
        raise ValueError(f"queries={queries!r}: give a non-empty list of non-empty strings")
    if answer is not None and not (isinstance(answer, str) and answer.strip()):
        raise ValueError(f"answer={answer!r}: give a non-empty string")


def make_protocol(
    rollout_cfg: RolloutConfig, tokenizer: PreTrainedTokenizerBase, answer_probe: str
) -> SearchR1Protocol | ToolCallProtocol:
    """The protocol `rollout_cfg.protocol` names, with the config's templates."""
    if rollout_cfg.protocol == "search_r1":
        return SearchR1Protocol(
            tokenizer,
            prompt_template=rollout_cfg.prompt_template,
            observation_template=rollout_cfg.observation_template,
            document_template=rollout_cfg.document_template,
            answer_probe=answer_probe,
            use_chat_template=rollout_cfg.use_chat_template,
            system_prompt=rollout_cfg.system_prompt,
        )
    if rollout_cfg.protocol == "tool_call":
        if not rollout_cfg.use_chat_template:
            raise ValueError(
                "rollout.protocol=tool_call renders tool calls and tool messages with the tokenizer's chat "
                "template; set rollout.use_chat_template=true"
            )
        return ToolCallProtocol(
            tokenizer,
            prompt_template=rollout_cfg.prompt_template,
            document_template=rollout_cfg.document_template,
            answer_probe=answer_probe,
            system_prompt=rollout_cfg.system_prompt,
        )
    raise ValueError(f"rollout.protocol={rollout_cfg.protocol!r} is not a protocol; accepted: {PROTOCOLS}")
