"""`tvr-jax serve INDEX`: a JSON API and a search page over an index (FastAPI on uvicorn).

    GET /                      the page: a query box and a grid of result thumbnails with scores
    GET /search?q=TEXT&k=10    {"query", "path", "first_stage", "candidates", "took_ms", "results":
                               [{"rank", "id", "score", "thumbnail"}]}; optional candidates=K, exact=1
    GET /health                {"status": "ok", "videos", "first_stage", "format"}
    GET /thumbs/ROW.jpg        a result's thumbnail (ROW: its row in the index)

The index and the model are loaded once; requests run concurrently in the server's thread pool
and only read shared state. Bad input gets a 4xx with {"error": ...}. Files are served by row
number only, from paths the manifest names, checked to lie inside the index folder: nothing else
on disk is reachable.
"""

import os
from urllib.parse import parse_qsl

from tvr_jax import search as search_lib

MAX_QUERY_CHARS = 500
MAX_CANDIDATES = 100_000
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


class BadRequest(ValueError):
    pass


def _params(raw: bytes) -> dict[str, str]:
    """Query parameters decoded strictly as UTF-8 (Starlette would replace bad bytes silently)."""
    out = {}
    for key, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True, encoding="latin-1"):
        try:
            out[key.encode("latin-1").decode("utf-8")] = value.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"parameter {key!r} is not valid UTF-8: send the query URL-encoded as UTF-8") from None
    return out


def _int(params: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    if name not in params or params[name] == "":
        return default
    try:
        value = int(params[name])
    except ValueError:
        raise BadRequest(f"{name}={params[name]!r} is not an integer") from None
    if not low <= value <= high:
        raise BadRequest(f"{name}={value} is out of range: use {low} to {high}")
    return value


def create_app(engine: search_lib.Searcher, candidates: int | None = None):
    """The FastAPI application around an opened index."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="tvr-jax search", docs_url=None, redoc_url=None, openapi_url=None)
    index_root = os.path.realpath(engine.index_dir)

    @app.exception_handler(BadRequest)
    async def bad_request(_, exc: BadRequest):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_, exc: HTTPException):
        message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        return JSONResponse({"error": message}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, exc: RequestValidationError):
        return JSONResponse({"error": "invalid request"}, status_code=400)

    @app.get("/health")
    def health():
        return {"status": "ok", "videos": engine.num_videos, "first_stage": engine.ann_desc,
                "format": engine.manifest["format"]}

    @app.get("/search")
    def search(request: Request):  # sync: runs in the thread pool, so requests overlap
        params = _params(request.scope.get("query_string", b""))
        query = params.get("q", "")
        if not query.strip():
            raise BadRequest("q is empty: give a sentence describing the video")
        if len(query) > MAX_QUERY_CHARS:
            raise BadRequest(f"q is {len(query)} characters long; at most {MAX_QUERY_CHARS}")
        k = _int(params, "k", 10, 1, search_lib.MAX_TOP_K)
        k_candidates = _int(params, "candidates", candidates, 1, MAX_CANDIDATES)
        exact = params.get("exact", "") in ("1", "true", "yes")
        try:
            result = engine.search(query, k, candidates=k_candidates, exact=exact)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        return {"query": query, "path": result.path, "first_stage": result.first_stage, "candidates": result.candidates,
                "videos": engine.num_videos, "took_ms": round(1e3 * result.seconds, 2),
                "results": [{"rank": i, "id": h.video_id, "score": h.score,
                             "thumbnail": f"/thumbs/{h.row}.jpg" if h.thumbnail else None}
                            for i, h in enumerate(result.hits, 1)]}

    @app.get("/thumbs/{name}")
    def thumbnail(name: str):
        row = name[: -len(".jpg")] if name.endswith(".jpg") else ""
        if not row.isdigit() or not row.isascii():
            raise HTTPException(404)
        relative = engine.thumbnail(int(row))
        if relative is None:
            raise HTTPException(404)
        path = os.path.realpath(os.path.join(index_root, relative))
        if os.path.commonpath([path, index_root]) != index_root or not os.path.isfile(path):
            raise HTTPException(404)
        return FileResponse(path, media_type="image/jpeg")

    @app.get("/")
    def page():
        return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

    return app


def run(index_dir: str, host: str = "127.0.0.1", port: int = 8080, candidates: int | None = None) -> None:
    import uvicorn

    engine = search_lib.Searcher(index_dir)
    engine.search("warm up", 1, candidates=candidates)  # compile the encoder and the re-ranker before the first request
    print(f"serving {index_dir} ({engine.num_videos:,} videos, first stage {engine.ann_desc}) on http://{host}:{port}/",
          flush=True)
    uvicorn.run(create_app(engine, candidates), host=host, port=port, log_level="warning")
