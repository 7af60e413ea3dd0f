"""The search proxy: a FastAPI service answering the agent's search calls (see services/search_proxy/app.py).

Importing this package pulls in only pydantic, pyyaml and httpx; the server (fastapi, uvicorn, bm25s) and
the dense backend (torch, faiss, sentence-transformers) load only when used.
"""

from services.search_proxy.client import SearchClient, SearchError
from services.search_proxy.launch import ProxyProcess, start_proxy
from services.search_proxy.settings import ProxySettings, load_settings

__all__ = ["ProxyProcess", "ProxySettings", "SearchClient", "SearchError", "load_settings", "start_proxy"]
