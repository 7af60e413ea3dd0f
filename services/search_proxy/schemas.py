"""Request and response bodies of the proxy's HTTP API (they also document it at /docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RetrieveRequest(BaseModel):
    """Search-R1's retrieval-server request. Unknown keys are ignored, as Search-R1's server does."""

    model_config = ConfigDict(strict=True)

    queries: list[str] = Field(description="Queries to answer, in order.")
    topk: int | None = Field(
        None, description="Passages per query; default: the proxy's limits.default_top_k."
    )
    return_scores: bool = Field(False, description="Wrap each passage as {document, score}.")


class SearchRequest(BaseModel):
    """A batch of queries for the proxy's own /search endpoint."""

    model_config = ConfigDict(strict=True, extra="forbid")

    queries: list[str] = Field(description="Queries to answer, in order.")
    top_k: int | None = Field(None, description="Hits per query; default: the proxy's limits.default_top_k.")
    backend: str | None = Field(
        None,
        description="Backend to ask; default: the configured one (a hybrid proxy also serves bm25 and dense).",
    )


class HitOut(BaseModel):
    id: str
    title: str
    text: str
    score: float = Field(description="Backend score, higher is better (web backends: 1 / rank).")
    url: str | None = Field(None, description="Present when the backend has one (web backends).")


class QueryResult(BaseModel):
    query: str = Field(description="The query as sent.")
    hits: list[HitOut]
    cached: bool = Field(description="Answered from the result cache.")
    backend_ms: float = Field(
        description="Wall time of the backend call (micro-batch) that answered; 0 if cached."
    )


class SearchResponse(BaseModel):
    backend: str
    top_k: int
    results: list[QueryResult] = Field(description="One entry per query, in request order.")


class RetrieveDocument(BaseModel):
    id: str
    contents: str = Field(description='Search-R1 layout: "Title" on the first line, then the text.')


class ScoredDocument(BaseModel):
    document: RetrieveDocument
    score: float


class RetrieveResponse(BaseModel):
    result: list[list[ScoredDocument]] | list[list[RetrieveDocument]] = Field(
        description="Per query: [{document, score}] with return_scores, else [{id, contents}]."
    )


class HealthResponse(BaseModel):
    status: Literal["loading", "ready", "failed"]
    backend: str
    backends: list[str] = Field(description="Backends this proxy serves (a request may name any of them).")
    passages: int | None = Field(None, description="Corpus size, for corpus backends.")
    cache_mode: str
    error: str | None = Field(None, description="Why loading failed.")


class ErrorResponse(BaseModel):
    detail: str = Field(description="What was wrong, naming the offending field where there is one.")
