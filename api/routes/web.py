"""The dashboard: static files under /ui (no build step), and / sending browsers there.

The page itself holds no data and needs no key: it signs in with an API key and reads everything from
the /v1 API, so serving it adds no route that could leak a tenant's objects.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
DASHBOARD_PATH = "/ui"

router = APIRouter(include_in_schema=False)


@router.get("/")
def root() -> RedirectResponse:
    """Browsers opening the service land on the dashboard."""
    return RedirectResponse(f"{DASHBOARD_PATH}/")


def install(app: FastAPI) -> None:
    """Serve the dashboard's files at /ui/ and redirect / to it."""
    app.include_router(router)
    app.mount(DASHBOARD_PATH, StaticFiles(directory=WEB_DIR, html=True), name="dashboard")
