"""``/docs``: Swagger UI from a pinned package, its start-up code in a file of ours.

FastAPI's own page loads Swagger UI from a CDN and starts it with an inline script; the app's
Content-Security-Policy (``script-src 'self'``, no inline scripts, no other hosts) refuses both
and the page stays blank. Here every asset comes from this origin, so the page works offline
and under the unchanged policy. ReDoc is not served.

Swagger UI's files are swagger-ui-dist's, as the ``swagger-ui-py`` package ships them (pinned
in pyproject.toml); only the few the page loads are reachable.
"""

from __future__ import annotations

import html
from importlib.util import find_spec
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from app.kit.errors import NotFoundError

ASSETS_PATH = "/docs/assets"


def _swagger_ui_dist() -> Path:
    # find_spec locates the package without importing it (its __init__ pulls in Jinja2).
    spec = find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed; `make install` installs it")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


_DIST = _swagger_ui_dist()
ASSETS: dict[str, Path] = {
    "swagger-ui.css": _DIST / "swagger-ui.css",
    "swagger-ui-bundle.js": _DIST / "swagger-ui-bundle.js",
    "favicon-32x32.png": _DIST / "favicon-32x32.png",
    "swagger-ui-start.js": Path(__file__).parent / "static" / "swagger-ui-start.js",
}
# An hour: the files change only with a release, and a stale copy is a developer's page.
ASSET_CACHE_CONTROL = "public, max-age=3600"

router = APIRouter(include_in_schema=False)


def docs_html(*, title: str, root_path: str, openapi_url: str) -> str:
    """The page: Swagger UI's stylesheet and bundle, then our start-up script, all same-origin.

    The start-up script reads the OpenAPI document's address from ``data-openapi-url``.
    """
    assets = html.escape(f"{root_path}{ASSETS_PATH}")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{html.escape(root_path + openapi_url)}"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/swagger-ui-start.js"></script>
</body>
</html>
"""


@router.get("/docs", response_class=HTMLResponse)
async def docs_page(request: Request) -> HTMLResponse:
    app = request.app
    return HTMLResponse(
        docs_html(
            title=f"{app.title} API",
            root_path=request.scope.get("root_path", "").rstrip("/"),
            openapi_url=app.openapi_url or "/openapi.json",
        )
    )


@router.get(ASSETS_PATH + "/{name}")
async def docs_asset(name: str) -> FileResponse:
    path = ASSETS.get(name)
    if path is None:
        raise NotFoundError("No such documentation asset.")
    return FileResponse(path, headers={"Cache-Control": ASSET_CACHE_CONTROL})
