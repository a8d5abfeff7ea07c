"""The API's documentation page, /docs (Swagger UI), with every script, style and icon it loads served by
the service itself, from the files the fastapi-offline package ships, instead of FastAPI's default CDN: the
page works offline and behind firewalls that block CDNs, and loads nothing from another origin.

There is no /redoc: ReDoc's bundle always fetches its vendor's logo from that vendor's CDN. The API uses
bearer keys, not OAuth2, so Swagger's OAuth2 redirect page is not served either.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_DIR = str(files("fastapi_offline") / "static")
ASSETS_PATH = "/docs-assets"

router = APIRouter(include_in_schema=False)


def _root(request: Request) -> str:
    """The proxy's path prefix (root_path) if the service runs behind one."""
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI over the OpenAPI document."""
    return get_swagger_ui_html(
        openapi_url=f"{_root(request)}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{_root(request)}{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{_root(request)}{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{_root(request)}{ASSETS_PATH}/favicon.png",
        oauth2_redirect_url=None,
        swagger_ui_parameters=request.app.swagger_ui_parameters,
    )


def install(app: FastAPI) -> None:
    """Serve /docs and its files under /docs-assets; the app must be built with docs_url=None and
    redoc_url=None, or FastAPI serves its CDN pages."""
    app.include_router(router)
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
