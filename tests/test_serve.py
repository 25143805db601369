"""`tvr-jax serve`: the JSON API, its 4xx answers, path traversal, concurrent requests, and the
page in a real headless Chromium on loopback. The index holds features with one thumbnail per
video; queries are encoded by a stand-in that describes the video a query names ("video 17"),
so the expected top result is known without training a model (tests/test_end_to_end.py serves
a trained model's index through the same app)."""

import concurrent.futures
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.test_search_two_stage import make_text, make_videos, write
from tvr_jax import search, serve

N = 48


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    videos = make_videos(N, seed=21)

    def thumbnails(folder, first_row):
        os.makedirs(folder)
        for r in range(N):  # a colour per video
            colour = tuple(int(c) for c in np.random.default_rng(r).integers(0, 256, 3))
            Image.new("RGB", (64, 48), colour).save(os.path.join(folder, f"{r}.jpg"), quality=90)

    write(tmp, "idx", videos, thumbnails=thumbnails)
    (tmp / "secret.txt").write_text("outside the index")

    def encoder(query):
        words = query.split()
        row = int(words[-1]) % N if words[-1].isdigit() else sum(map(ord, query)) % N
        return make_text(row, like=(videos["frames"][row], videos["frame_mask"][row]))

    return search.Searcher(str(tmp / "idx"), model=False, encoder=encoder)


@pytest.fixture(scope="module")
def client(engine):
    from fastapi.testclient import TestClient

    return TestClient(serve.create_app(engine, candidates=16))


def test_search_returns_ids_scores_and_thumbnails(client, engine):
    r = client.get("/search", params={"q": "video 17", "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["path"] == "two-stage" and body["candidates"] == 16 and body["videos"] == N
    assert [h["rank"] for h in body["results"]] == [1, 2, 3, 4, 5]
    top = body["results"][0]
    assert top["id"] == engine.video_ids[17] and top["thumbnail"] == "/thumbs/17.jpg"
    assert all(a["score"] >= b["score"] for a, b in zip(body["results"], body["results"][1:]))
    image = client.get(top["thumbnail"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg" and image.content[:2] == b"\xff\xd8"
    exact = client.get("/search", params={"q": "video 17", "k": 5, "exact": 1}).json()
    assert exact["path"] == "exact" and exact["results"][0]["id"] == top["id"]
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["videos"] == N and health["format"] == search.INDEX_FORMAT
    page = client.get("/")
    assert page.status_code == 200 and "<input id=\"q\"" in page.text


@pytest.mark.parametrize("url, message", [
    ("/search?q=", "empty"), ("/search", "empty"), ("/search?q=%20%20", "empty"),
    ("/search?q=" + "a" * (serve.MAX_QUERY_CHARS + 1), "at most"),
    ("/search?q=%FF%FEvideo", "UTF-8"), ("/search?q=video&k=0", "out of range"),
    ("/search?q=video&k=1001", "out of range"), ("/search?q=video&k=ten", "not an integer"),
    ("/search?q=video&candidates=0", "out of range"),
])
def test_bad_queries_get_a_400_and_the_server_keeps_serving(client, url, message):
    r = client.get(url)
    assert r.status_code == 400 and message in r.json()["error"]
    assert client.get("/search", params={"q": "video 3"}).status_code == 200


@pytest.mark.parametrize("url", [
    "/nowhere", "/thumbs/999.jpg", "/thumbs/-1.jpg", "/thumbs/1.png", "/thumbs/abc.jpg", "/thumbs/١.jpg",
    "/thumbs/..%2f..%2fsecret.txt", "/thumbs/%2e%2e/%2e%2e/secret.txt", "/thumbs/../../secret.txt",
    "/../secret.txt", "/%2e%2e/secret.txt", "/thumbs/..%2Fmanifest.json", "/manifest.json",
    "/shard-00000/thumbs/1.jpg", "/static/../../secret.txt", "/thumbs/1.jpg%00.txt",
])
def test_nothing_outside_the_thumbnails_is_served(client, url):
    r = client.get(url)
    assert r.status_code == 404 and "outside the index" not in r.text and "fingerprint" not in r.text
    assert r.json() == {"error": "not found"}


def test_thumbnail_paths_are_checked_to_stay_in_the_index(engine, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setattr(engine, "thumbnail", lambda row: "../secret.txt")
    assert TestClient(serve.create_app(engine)).get("/thumbs/1.jpg").status_code == 404


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(engine):
    """uvicorn on 127.0.0.1 at a free port, in a thread of this process."""
    import httpx
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(serve.create_app(engine, candidates=16), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


def test_concurrent_requests_give_the_sequential_answers(live_server):
    import httpx

    queries = [(f"video {i % N}", 1 + i % 7) for i in range(48)]
    with httpx.Client(base_url=live_server, timeout=60) as http:
        sequential = [http.get("/search", params={"q": q, "k": k}).json()["results"] for q, k in queries]
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            parallel = list(pool.map(lambda qk: http.get("/search", params={"q": qk[0], "k": qk[1]}).json()["results"],
                                     queries))
    assert parallel == sequential
    assert [r[0]["thumbnail"] for r in sequential[:N]] == [f"/thumbs/{i % N}.jpg" for i, _ in enumerate(queries[:N])]


CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                 if p and os.access(p, os.X_OK)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (Debian: apt-get install chromium)")
def test_page_in_a_headless_browser_shows_the_expected_top_thumbnail(live_server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(  # a fresh profile folder; the page is on loopback only
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, viewport={"width": 1100, "height": 720},
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(live_server + "/")
            page.fill("#q", "video 29")
            page.press("#q", "Enter")
            top = page.locator("#results figure.hit").first
            top.wait_for(timeout=30_000)
            img = top.locator("img")
            assert img.get_attribute("src") == "/thumbs/29.jpg"
            page.wait_for_function("document.querySelector('#results img').complete")
            assert img.evaluate("i => i.naturalWidth") == 64  # the thumbnail itself loaded, not a broken image
            assert "two-stage" in page.inner_text("#status")
            page.fill("#q", "")
            page.press("#q", "Enter")
            page.wait_for_selector("#status.error")
            assert "empty" in page.inner_text("#status")
            if os.environ.get("TVR_SCREENSHOT"):  # README's picture: TVR_SCREENSHOT=docs/search_page.png
                page.fill("#q", "video 29")
                page.press("#q", "Enter")
                page.wait_for_selector("#results figure.hit")
                page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete)")
                page.screenshot(path=os.environ["TVR_SCREENSHOT"], full_page=True)
        finally:
            browser.close()
