"""The web page (`/ui/`) and the API docs (`/docs`, `/redoc`), all from files installed with the package.

Nothing is fetched from a CDN: Swagger UI, Redoc and NiiVue are vendored in web/static/vendor (with their licences;
scripts/update-web-assets.sh refreshes them from npm). Every URL these pages use is relative, so they work behind a
proxy under a path prefix (the shipped NGINX site's /inferserver/) as well as at the root.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "web" / "static"
VENDOR = "ui/vendor"  # relative to /docs and /redoc, which sit at the same level as /ui/

router = APIRouter(include_in_schema=False)


@router.get("/ui")
async def ui_without_slash() -> Response:
    # A relative Location: never built from the client's Host header, and right under any proxy prefix.
    return Response(status_code=307, headers={"Location": "ui/"})


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="openapi.json",
        title="inferserver API",
        swagger_js_url=f"{VENDOR}/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{VENDOR}/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{VENDOR}/swagger-ui/favicon.png",
        oauth2_redirect_url=None,
        swagger_ui_parameters={"validatorUrl": None},  # its default sends the schema to validator.swagger.io
    )


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return get_redoc_html(
        openapi_url="openapi.json",
        title="inferserver API",
        redoc_js_url=f"{VENDOR}/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{VENDOR}/swagger-ui/favicon.png",
        with_google_fonts=False,
    )


def install(app: FastAPI) -> None:
    """The routes above and the page's files under /ui/ (index.html at /ui/)."""
    app.include_router(router)
    app.mount("/ui", StaticFiles(directory=STATIC, html=True), name="ui")
