"""An `Engine` over any OpenAI-compatible HTTP endpoint (a vLLM server, `transformers serve`, a hosted API).

Token ids in, `Generation`s out, like HFEngine and the vLLM engine (contract in engine.py), with what an HTTP
endpoint can and cannot give:

- `completions` mode (default; any protocol): each context is decoded with the local tokenizer
  (`skip_special_tokens=False`, so chat-template markers travel as text) and sent as the `prompt` of
  `POST {base_url}/completions` with the row's budget as `max_tokens`, the protocol's stop strings as `stop`,
  temperature / top_p (top_k only when set: it is not an OpenAI field) and a per-row seed. The server
  tokenises the prompt itself; a leading BOS id is dropped from the text when the local tokenizer adds one
  on its own (the server adds it again).
- `chat` mode (`protocol=tool_call` only): the context is mapped back to messages -- [system], user, then per
  turn an assistant message (the turn's text) and a tool message (the observation's passages) -- by splitting
  the decoded text at the protocol's chat-template frames, and sent to `POST {base_url}/chat/completions` with
  the `search` tool. A returned `tool_calls` list is written back as the Qwen2.5-style `<tool_call>` text the
  protocol parses. The server renders the messages with its own chat template; that is the same prompt as
  ours only when it is the same template. `search_r1` contexts have no message structure to map (a whole
  trajectory is one assistant message), so chat mode refuses them.

What comes back is text: the generation's ids are the returned text tokenised locally, which equals the
sampled ids whenever the tokenizer round-trips (exactly true for the built-in tiny models; a BPE can merge
differently in rare cases). Stop strings: servers differ -- `transformers serve` keeps the stop string in the
text, OpenAI and vLLM (by default) drop it; vLLM says which one matched (`stop_reason`). A dropped stop string
is restored: vLLM's `stop_reason`, else a closing tag `</x>` whose `<x>` is left open in the text. A "stop"
with neither is the end-of-sequence token, which is appended (the server decodes without special tokens), so
`finish="eos"` ends the trajectory as it would with HFEngine. A retokenised text longer than the row's
budget is cut to it (`finish="length"`).

Requests: up to `concurrency` in flight (threads over one pooled httpx client); a connection error, a timeout,
429 or 5xx is retried `retries` times with exponential backoff from `backoff_s` (a Retry-After header wins);
any other 4xx is not retried. A request that still fails raises `EndpointError` naming the URL and the last
cause. The API key comes from the environment variable `api_key_env` and is sent only as the Authorization
header: it is never part of a message, a log line or the recorded setting.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx

from igpo_rlhf.rollout.engine import Finish, Generation, check_generate_args
from igpo_rlhf.rollout.protocols import SEARCH_TOOL, ToolCallProtocol
from igpo_rlhf.rollout.vllm_engine import row_seeds

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from igpo_rlhf.config import OpenAIEngineConfig

Mode = Literal["completions", "chat"]
MODES = ("completions", "chat")
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_CLOSING_TAG = re.compile(r"^</([A-Za-z_][\w-]*)>$")
_MARK = "\x00igpo-user\x00"


class EndpointError(RuntimeError):
    """The endpoint failed a request after its retries (or refused it); the message names URL and cause."""


def api_key_from_env(api_key_env: str | None) -> str | None:
    """The API key held by the environment variable `api_key_env` (None: no key); ValueError when unset."""
    if api_key_env is None:
        return None
    key = os.environ.get(api_key_env)
    if not key:
        raise ValueError(
            f"rollout.openai.api_key_env={api_key_env!r} but that environment variable is not set or empty"
        )
    return key


# --------------------------------------------------------------------------------------- text <-> tokens
def restore_stop(text: str, stop_strings: list[str], stop_reason: Any) -> tuple[str, Finish]:
    """(turn text with its stop string, finish) for a generation the server reports as "stop".

    `stop_reason`: vLLM's field (the matched stop string, a stop token id, or None for EOS); absent (None)
    for other servers. See the module docstring for the rules."""
    if isinstance(stop_reason, str) and stop_reason in stop_strings:
        return (text if text.endswith(stop_reason) else text + stop_reason), "stop"
    if any(s in text for s in stop_strings):
        return text, "stop"  # the server kept it (transformers serve)
    if stop_reason is None:
        for s in stop_strings:
            tag = _CLOSING_TAG.match(s)
            if tag and text.count(f"<{tag.group(1)}>") > text.count(s):
                return text + s, "stop"
    return text, "eos"


def _chat_frames(protocol: ToolCallProtocol) -> tuple[str, str]:
    """Text of the chat-template prompt before and after the question (template text around it included)."""
    if protocol.prompt_template.count("{question}") != 1:
        raise ValueError("chat mode needs a prompt_template that holds {question} exactly once")
    head, tail = protocol.prompt_text(_MARK).split(_MARK)
    return head, tail


def context_messages(protocol: ToolCallProtocol, context_text: str) -> list[dict[str, Any]]:
    """The chat messages a `tool_call` context renders from: [system], user, (assistant, tool)*.

    The user message is `prompt_template` with the question; every observation is the protocol's tool-message
    frame around the passages (ToolCallProtocol.obs_head / obs_tail), so the context splits there. ValueError
    when the text does not have that layout."""
    head, tail = _chat_frames(protocol)
    if not context_text.startswith(head):
        raise ValueError(
            "the context does not start with the protocol's chat prompt; cannot map it to messages"
        )
    rest = context_text[len(head) :]
    if tail not in rest:
        raise ValueError("the context's user message has no end; cannot map it to messages")
    question, rest = rest.split(tail, 1)
    messages: list[dict[str, Any]] = []
    if protocol.system_prompt:
        messages.append({"role": "system", "content": protocol.system_prompt})
    messages.append({"role": "user", "content": protocol.prompt_template.replace("{question}", question)})
    while rest:
        if protocol.obs_head not in rest:
            raise ValueError(
                "the context ends inside an assistant turn; chat mode continues only after a tool message"
            )
        turn, rest = rest.split(protocol.obs_head, 1)
        if protocol.obs_tail not in rest:
            raise ValueError("a tool message in the context has no end; cannot map it to messages")
        body, rest = rest.split(protocol.obs_tail, 1)
        messages.append({"role": "assistant", "content": turn})
        messages.append({"role": "tool", "name": "search", "content": body})
    return messages


def tool_calls_text(tool_calls: list[dict[str, Any]]) -> str:
    """A chat response's structured tool calls as the `<tool_call>` text the tool_call protocol parses."""
    parts = []
    for call in tool_calls:
        fn = call.get("function") or {}
        args = fn.get("arguments")
        with contextlib.suppress(
            json.JSONDecodeError
        ):  # else kept as a string: the protocol finds it invalid
            args = json.loads(args) if isinstance(args, str) else args
        body = json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False)
        parts.append(f"<tool_call>\n{body}\n</tool_call>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------- engine
@dataclass(frozen=True)
class _Reply:
    text: str
    finish_reason: str
    stop_reason: Any = None


class OpenAIEngine:
    """`Engine` over an OpenAI-compatible endpoint (see the module docstring for what each mode supports)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        base_url: str,
        model: str,
        mode: Mode = "completions",
        protocol: ToolCallProtocol | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; accepted: {', '.join(MODES)}")
        if mode == "chat" and not isinstance(protocol, ToolCallProtocol):
            raise ValueError(
                "rollout.openai.mode=chat maps contexts to chat messages, which only rollout.protocol=tool_call "
                "contexts have (a search_r1 trajectory is one long assistant message); use mode=completions"
            )
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency={concurrency!r}: expected an int >= 1")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"rollout.openai.base_url={base_url!r}: expected an http(s):// URL ending in /v1"
            )
        self.tokenizer = tokenizer
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.mode = mode
        self.protocol = protocol
        self.retries = retries
        self.backoff_s = backoff_s
        self.concurrency = concurrency
        self.extra_body = dict(extra_body or {})
        self.url = f"{self.base_url}/{'chat/completions' if mode == 'chat' else 'completions'}"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=timeout_s,
            trust_env=False,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="openai-engine")
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError(
                "the tokenizer names no EOS token; the endpoint engine appends it when a row ends"
            )
        self.eos_id = int(eos)
        bos = tokenizer.bos_token_id
        probe = tokenizer.encode("a")
        self.drop_bos = bos if bos is not None and probe and probe[0] == bos else None

    @classmethod
    def from_config(
        cls,
        cfg: OpenAIEngineConfig,
        tokenizer: PreTrainedTokenizerBase,
        *,
        model_path: str,
        protocol: Any = None,
    ) -> OpenAIEngine:
        """The engine the `rollout.openai` section describes (the key from `api_key_env`)."""
        return cls(
            tokenizer,
            base_url=cfg.base_url,
            model=cfg.model or model_path,
            mode=cfg.mode,
            protocol=protocol,
            api_key=api_key_from_env(cfg.api_key_env),
            concurrency=cfg.concurrency,
            timeout_s=cfg.timeout_s,
            retries=cfg.retries,
            backoff_s=cfg.backoff_s,
            extra_body=cfg.extra_body,
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()

    def generate(
        self,
        contexts: list[list[int]],
        *,
        max_new_tokens: list[int],
        stop_strings: list[str],
        temperature: float,
        top_p: float,
        top_k: int,
        seed: int | None,
    ) -> list[Generation]:
        """One request per row, `concurrency` in flight; contract in engine.py (ids: the text retokenised)."""
        check_generate_args(contexts, max_new_tokens, temperature, top_p, top_k)
        seeds = row_seeds(seed, len(contexts))
        futures = [
            self._pool.submit(self._one, ctx, budget, list(stop_strings), temperature, top_p, top_k, s)
            for ctx, budget, s in zip(contexts, max_new_tokens, seeds, strict=True)
        ]
        wait(futures)  # every request finishes (or fails) before we return or raise: none is left running
        return [f.result() for f in futures]

    # ------------------------------------------------------------------------------------------ one row
    def _one(
        self,
        ctx: list[int],
        budget: int,
        stop_strings: list[str],
        temperature: float,
        top_p: float,
        top_k: int,
        seed: int | None,
    ) -> Generation:
        ids = ctx[1:] if self.drop_bos is not None and ctx and ctx[0] == self.drop_bos else ctx
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": budget,
            "stop": stop_strings,
            "temperature": temperature,
            "top_p": top_p,
            **({"top_k": top_k} if top_k != -1 else {}),
            **({"seed": seed} if seed is not None else {}),
        }
        if self.mode == "chat":
            body |= {"messages": context_messages(self.protocol, text), "tools": [SEARCH_TOOL]}
        else:
            body["prompt"] = text
        reply = self._parse(self._post(body | self.extra_body))
        return self._generation(reply, budget, stop_strings)

    def _generation(self, reply: _Reply, budget: int, stop_strings: list[str]) -> Generation:
        text = reply.text
        finish: Finish
        if reply.finish_reason != "length":  # "stop", "tool_calls", ...: ended by a stop string or by EOS
            text, finish = restore_stop(text, stop_strings, reply.stop_reason)
        else:  # a stop string completed by the budget's last token is a stop, as HFEngine reports it
            finish = "stop" if any(s in text for s in stop_strings) else "length"
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if finish == "eos":
            ids = ids + [self.eos_id]
        if not ids:  # nothing came back for a "length" finish: an empty turn cannot be recorded
            raise EndpointError(f"{self.url} returned an empty completion with finish_reason 'length'")
        if len(ids) > budget:
            ids, finish = ids[:budget], "length"
        return Generation(token_ids=ids, finish=finish)

    def _parse(self, answer: dict[str, Any]) -> _Reply:
        try:
            choice = answer["choices"][0]
            finish = choice.get("finish_reason") or "stop"
            if self.mode == "chat":
                message = choice["message"]
                text = message.get("content") or ""
                if message.get("tool_calls"):
                    text = (text + "\n" if text else "") + tool_calls_text(message["tool_calls"])
            else:
                text = choice["text"]
        except (KeyError, IndexError, TypeError) as exc:
            raise EndpointError(
                f"{self.url} answered without choices[0].{'message' if self.mode == 'chat' else 'text'} "
                f"({type(exc).__name__}: {exc}); is it an OpenAI-compatible {self.mode} endpoint?"
            ) from None
        if not isinstance(text, str):
            raise EndpointError(f"{self.url} answered with a non-text completion: {text!r}")
        return _Reply(text=text, finish_reason=str(finish), stop_reason=choice.get("stop_reason"))

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST with retries; the parsed JSON answer, or EndpointError naming the URL and the last cause."""
        cause = ""
        for attempt in range(self.retries + 1):
            delay = self.backoff_s * 2**attempt
            try:
                response = self._client.post(self.url, json=body)
            except httpx.TimeoutException as exc:
                cause = f"timed out ({type(exc).__name__})"
            except httpx.TransportError as exc:
                cause = f"connection failed ({type(exc).__name__}: {exc})"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        raise EndpointError(f"{self.url} answered 200 with a body that is not JSON") from None
                cause = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in _RETRY_STATUS:
                    raise EndpointError(f"{self.url} refused the request: {cause}")
                retry_after = response.headers.get("retry-after")
                if retry_after is not None:
                    with contextlib.suppress(ValueError):
                        delay = max(0.0, float(retry_after))
            if attempt < self.retries:
                time.sleep(delay)
        raise EndpointError(f"{self.url} failed after {self.retries + 1} attempts; last: {cause}")
