"""/docs: Swagger UI served by the app itself, shown in a real browser under the production CSP.

The browser test runs Debian's Chromium (/usr/bin/chromium, installed by .ci/run) through
Playwright, against uvicorn serving the app over real HTTP with production's settings: the
same Content-Security-Policy (``script-src 'self'``, no inline scripts, no other hosts) that
left FastAPI's CDN-loaded page blank.
"""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.routing import iter_route_contexts

from app.devstack.supervisor import Stack
from app.main import create_app
from app.settings import Environment, Settings
from tests.app.security.helpers import running_app
from tests.app.test_client_cli import LiveApi, serving

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing of its own on the network: no updates, sync or first-run pages.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Collected in the page before any of its scripts run (Playwright injects this over the
# DevTools protocol, which the page's CSP does not govern).
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} refused ${event.blockedURI}`);
});
"""
DOCS_ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "javascript",
    "swagger-ui-start.js": "javascript",
    "favicon-32x32.png": "image/png",
}

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's Chromium is not at /usr/bin/chromium (apt-get install chromium; .ci/run "
    "installs it)",
)


class _LinkedUrls(HTMLParser):
    """Every src and href in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in {"src", "href"} and value]


def linked_urls(page: str) -> list[str]:
    parser = _LinkedUrls()
    parser.feed(page)
    return parser.urls


# -- in a browser -----------------------------------------------------------------------------


@pytest.fixture
def production_api(settings: Any) -> Iterator[LiveApi]:
    """The app as production runs it (its headers, HSTS included), docs on, over real HTTP."""
    production = settings.model_copy(
        update={"environment": Environment.production, "api_docs_enabled": True}
    )
    with serving(create_app(production)) as api:
        yield api


@needs_chromium
def test_docs_render_in_chromium_under_the_production_csp(
    production_api: LiveApi, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    problems: list[str] = []
    elsewhere: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            tmp_path / "profile",  # a fresh profile every run
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            page = browser.new_page()
            page.add_init_script(RECORD_CSP_VIOLATIONS)
            page.on(
                "console",
                lambda message: (
                    problems.append(f"console error: {message.text}")
                    if message.type == "error"
                    else None
                ),
            )
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on(
                "requestfailed",
                lambda request: problems.append(f"failed: {request.url} {request.failure}"),
            )
            page.on(
                "request",
                lambda request: (
                    None
                    if request.url.startswith(production_api.url + "/")
                    else elsewhere.append(request.url)
                ),
            )

            response = page.goto(f"{production_api.url}/docs")
            assert response is not None
            assert response.status == 200
            csp = response.headers["content-security-policy"]
            assert "script-src 'self' 'wasm-unsafe-eval';" in csp  # production's, unchanged
            assert "'unsafe-inline'" not in csp

            search = page.locator(
                ".opblock-post", has=page.locator(".opblock-summary-path[data-path='/api/search']")
            )
            expect(search).to_be_visible(timeout=30_000)
            expect(page.locator(".opblock")).not_to_have_count(0)
            assert page.locator(".opblock").count() > 20  # every operation, not just the first
            page.screenshot(path=tmp_path / "docs.png")

            # Opened: its parameters, request body schema and responses render too.
            search.locator(".opblock-summary").first.click()
            expect(search.locator(".opblock-body")).to_be_visible()
            expect(search.locator(".responses-wrapper")).to_be_visible()
            search.scroll_into_view_if_needed()
            page.screenshot(path=tmp_path / "docs-search.png")

            violations = page.evaluate("window.__cspViolations")
        finally:
            browser.close()

    print(f"screenshots: {tmp_path / 'docs.png'}, {tmp_path / 'docs-search.png'}")
    assert violations == []
    assert problems == []
    assert elsewhere == []


# -- over HTTP --------------------------------------------------------------------------------


async def test_no_html_the_app_serves_points_at_another_host(client: Any, app: Any) -> None:
    pages = 0
    for route in iter_route_contexts(app.routes):  # included routers' routes too
        if route.path is None or "{" in route.path or "GET" not in (route.methods or ()):
            continue
        response = await client.get(route.path)
        if not response.headers.get("content-type", "").startswith("text/html"):
            continue
        pages += 1
        urls = linked_urls(response.text)
        assert urls, route.path
        for url in urls:
            parts = urlsplit(url)
            assert (parts.scheme, parts.netloc) == ("", ""), (route.path, url)
            assert url.startswith("/"), (route.path, url)
            assert (await client.get(url)).status_code == 200, url
    assert pages >= 1  # /docs at least


async def test_docs_assets_are_ours_and_only_those(client: Any) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert "<script>" not in page.text  # no inline script: the CSP would refuse it
    assert 'data-openapi-url="/openapi.json"' in page.text
    for name, kind in DOCS_ASSETS.items():
        response = await client.get(f"/docs/assets/{name}")
        assert response.status_code == 200, name
        assert kind in response.headers["content-type"], name
        assert response.headers["cache-control"] == "public, max-age=3600"
        assert response.headers["x-content-type-options"] == "nosniff"
    start = (await client.get("/docs/assets/swagger-ui-start.js")).text
    assert "validatorUrl: null" in start  # the document is never sent to validator.swagger.io
    for name in ("swagger-editor-bundle.js", "..%2Froutes.py", "index.html", "LICENSE"):
        response = await client.get(f"/docs/assets/{name}")
        assert response.status_code == 404, name
        assert response.headers["content-type"] == "application/problem+json"
    assert (await client.get("/redoc")).status_code == 404


@pytest.mark.parametrize(
    ("environment", "enabled", "served"),
    [
        ("production", None, False),
        ("production", True, True),
        ("development", None, True),
        ("test", None, True),
        ("development", False, False),
    ],
)
async def test_docs_and_openapi_follow_the_setting(
    settings: Any, environment: str, enabled: bool | None, served: bool
) -> None:
    async with running_app(settings, environment=environment, api_docs_enabled=enabled) as http:
        for path in ("/docs", "/openapi.json", "/docs/assets/swagger-ui-bundle.js"):
            response = await http.get(path)
            assert response.status_code == (200 if served else 404), path
        # Built in-process either way (the schema checks may use app.openapi()).
        assert "/api/search" in http.application.openapi()["paths"]  # type: ignore[attr-defined]


def test_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.delenv("API_DOCS_ENABLED", raising=False)
    assert Settings().serves_api_docs is False
    monkeypatch.setenv("API_DOCS_ENABLED", "true")
    assert Settings().serves_api_docs is True
    monkeypatch.setenv("ENVIRONMENT", "development")
    monkeypatch.setenv("API_DOCS_ENABLED", "false")
    assert Settings().serves_api_docs is False


def stack_env(tmp_path: Path, **settings: Any) -> dict[str, str]:
    """The environment `record up` gives the API it starts."""
    stack = Stack(Settings(state_dir=tmp_path / "state", **settings), root=tmp_path)
    stack.prepare()
    return stack.base_env()


def test_record_up_shows_docs_whatever_the_environment(tmp_path: Path) -> None:
    for environment in ("production", "development"):
        assert stack_env(tmp_path, environment=environment)["API_DOCS_ENABLED"] == "true"
    off = stack_env(tmp_path, environment="development", api_docs_enabled=False)
    assert off.get("API_DOCS_ENABLED") != "true"
