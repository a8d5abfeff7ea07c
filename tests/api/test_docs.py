"""/docs (Swagger UI) loads nothing from another origin: its script, stylesheet and icon come from the
service itself, so the page works offline and behind firewalls that block CDNs. Checked on the HTML (every
URL it names is ours and answers with the right type) and in a real headless Chromium that refuses every
request to another origin (the page still draws the API's operations). There is no /redoc: ReDoc's bundle
always fetches its vendor's logo from a CDN."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import uvicorn
from fastapi.testclient import TestClient

import migrations
from api.main import create_app
from core.settings import Settings
from tests.support.availability import unavailable
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.factories import TEST_PEPPER
from tests.support.ports import free_port

# Attributes that make a browser fetch (src, href), and the spec URL in Swagger's script.
REFERENCE = re.compile(r"""(?:\b(?:src|href)="([^"]*)"|\burl: '([^']*)')""")
# Anything absolute or scheme-relative (https://cdn..., //fonts...), wherever it stands in the page.
FOREIGN = re.compile(r"""(?:[a-z][a-z0-9+.-]*:)?//[^\s'"<>]+""", re.IGNORECASE)
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".json": "application/json",
}
# The browser reaches the service by a host name, as from another machine, so that nothing which treats
# loopback addresses as local (Swagger UI's online validator does) can hide a request to another origin.
HOST = "mapo-docs.test"


def referenced_urls(html: str) -> list[str]:
    return [src or spec for src, spec in REFERENCE.findall(html)]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_docs_page_references_only_its_own_assets_and_each_answers(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert FOREIGN.findall(response.text) == []
    urls = referenced_urls(response.text)
    assert len(urls) == 4, urls  # the script, the stylesheet, the icon and the spec
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and url.startswith("/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        expected = CONTENT_TYPES[Path(parts.path).suffix]
        assert asset.headers["content-type"].startswith(expected), (url, asset.headers["content-type"])
        assert len(asset.content) > 100, url


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_there_is_no_redoc_page(client: TestClient) -> None:
    assert client.get("/redoc").status_code == 404


@pytest.fixture(scope="module")
def served_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The API (create_app, as `mapo serve` runs it) on a free loopback port, on its own migrated SQLite."""
    root = tmp_path_factory.mktemp("docs")
    settings = Settings(environment="test", data_dir=root / "data", api_key_pepper=TEST_PEPPER)  # type: ignore[arg-type]
    settings.ensure_dirs()
    migrations.upgrade(settings.sqlalchemy_url)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=30)


@pytest.mark.slow
def test_docs_page_draws_the_api_in_chromium_with_other_origins_refused(served_port: int) -> None:
    try:
        from playwright.sync_api import Route, sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed (pip install -e '.[dev]'); docs test skipped")
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing (apt-get install chromium); docs test skipped")
    origin = f"http://{HOST}:{served_port}"
    refused: list[str] = []

    def same_origin_only(route: Route) -> None:
        if route.request.url.startswith(f"{origin}/"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    args = [*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {HOST} 127.0.0.1"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        tab = browser.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.route("**/*", same_origin_only)
        tab.goto(f"{origin}/docs")
        tab.wait_for_selector(".swagger-ui .opblock-summary-path", timeout=60_000)
        tab.wait_for_load_state("networkidle")  # images such as the validator badge come after the operations
        operations = tab.locator(".swagger-ui .opblock-summary-path").count()
        title = tab.locator(".swagger-ui .info .title").inner_text()
        browser.close()
    assert refused == [] and errors == []
    assert operations >= 20 and title.startswith("mapo-service")
