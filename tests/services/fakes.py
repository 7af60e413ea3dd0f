"""Local stand-ins for upstreams the tests cannot reach, served by real uvicorn on 127.0.0.1.

- `gated_retriever`: a Search-R1 /retrieve server that holds each request until the test opens a gate
  (for slow-upstream, timeout and overload cases, without timing guesses).
- `failing_retriever`: a Search-R1 /retrieve server that answers HTTP 500 to any request holding a query
  with "fail" in it (a backend failing in the middle of a large, chunked request).
- `fake_serper` / `fake_bing`: this machine cannot reach google.serper.dev or api.bing.microsoft.com, so
  these mimic each API's documented request and answer (see services/search_proxy/backends/web.py), check
  the key header, and record what they received.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def gated_retriever(gate: threading.Event, received: list[dict[str, Any]]) -> FastAPI:
    """POST /retrieve answering one fixed passage per query, once `gate` is set."""
    app = FastAPI()

    @app.post("/retrieve")
    async def retrieve(request: Request) -> JSONResponse:
        body = await request.json()
        received.append(body)
        await asyncio.to_thread(gate.wait, 60)
        result = [
            [{"document": {"id": f"r-{q}", "contents": f'"Upstream"\nanswer to {q}'}, "score": 1.0}]
            for q in body["queries"]
        ]
        return JSONResponse({"result": result})

    return app


def failing_retriever() -> FastAPI:
    """POST /retrieve answering one fixed passage per query, or HTTP 500 when a query contains "fail"."""
    app = FastAPI()

    @app.post("/retrieve")
    async def retrieve(request: Request) -> JSONResponse:
        body = await request.json()
        if any("fail" in q for q in body["queries"]):
            return JSONResponse({"detail": "index shard offline"}, status_code=500)
        result = [
            [{"document": {"id": f"r-{q}", "contents": f'"Upstream"\nanswer to {q}'}, "score": 1.0}]
            for q in body["queries"]
        ]
        return JSONResponse({"result": result})

    return app


def _slug(text: str) -> str:
    return "-".join(text.split())


def fake_serper(api_key: str, received: list[dict[str, Any]]) -> FastAPI:
    """POST /search with X-API-KEY and {"q", "num", "gl", "hl"} -> {"searchParameters", "organic": [...]}.

    Answers `num` organic results (none for a query containing "nothing"); a wrong key gets 403.
    """
    app = FastAPI()

    @app.post("/search")
    async def search(request: Request) -> JSONResponse:
        body = await request.json()
        received.append({"headers": dict(request.headers), "body": body})
        if request.headers.get("x-api-key") != api_key:
            return JSONResponse({"message": "Unauthorized.", "statusCode": 403}, status_code=403)
        q, num = body["q"], body.get("num", 10)
        organic = (
            []
            if "nothing" in q
            else [
                {
                    "title": f"{q} - result {i}",
                    "link": f"https://example.org/{_slug(q)}/{i}",
                    "snippet": f"Snippet {i} about {q}.",
                    "position": i,
                }
                for i in range(1, num + 1)
            ]
        )
        return JSONResponse(
            {"searchParameters": {**body, "type": "search", "engine": "google"}, "organic": organic}
        )

    return app


def fake_bing(api_key: str, received: list[dict[str, Any]]) -> FastAPI:
    """GET /v7.0/search?q=&count=&mkt= with Ocp-Apim-Subscription-Key -> {"_type": "SearchResponse", "webPages"}.

    `webPages` is absent when nothing matched (a query containing "nothing"); a wrong key gets Bing's
    401 ErrorResponse.
    """
    app = FastAPI()

    @app.get("/v7.0/search")
    async def search(request: Request) -> JSONResponse:
        params = dict(request.query_params)
        received.append({"headers": dict(request.headers), "params": params})
        if request.headers.get("ocp-apim-subscription-key") != api_key:
            error = {
                "code": "InvalidAuthorization",
                "subCode": "AuthorizationMissing",
                "message": "Access denied.",
            }
            return JSONResponse({"_type": "ErrorResponse", "errors": [error]}, status_code=401)
        q, count = params["q"], int(params.get("count", 10))
        answer: dict[str, Any] = {"_type": "SearchResponse", "queryContext": {"originalQuery": q}}
        if "nothing" not in q:
            answer["webPages"] = {
                "webSearchUrl": f"https://www.bing.com/search?q={_slug(q)}",
                "totalEstimatedMatches": 1000,
                "value": [
                    {
                        "id": f"https://api.bing.microsoft.com/api/v7/#WebPages.{i}",
                        "name": f"{q} - page {i}",
                        "url": f"https://example.com/{_slug(q)}/{i}",
                        "displayUrl": f"example.com/{_slug(q)}/{i}",
                        "snippet": f"Bing snippet {i} for {q}.",
                    }
                    for i in range(count)
                ],
            }
        return JSONResponse(answer)

    return app
