"""What a person's browser gets: the prediction page at ``/`` (plain HTML and one script from
``service/assets/web``, no build step, nothing from another host), the example clips by name, and
the favicon, and ReDoc at ``/redoc``. The API docs' scripts (Swagger UI at ``/docs``, ReDoc) come
from ``fastapi_offline``, which ships them in its wheel, so they render on a host without internet access.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.codecs.negotiation import NPY
from service.core.assets import ASSETS
from service.core.errors import NotFound

WEB_DIR = ASSETS / "web"
EXAMPLES_DIR = ASSETS / "examples"
# under /static/, which API keys leave open (service.server.security): a browser loads these files
# before a person can type a key into the page
DOCS_STATIC_URL = "/static/docs"  # fastapi_offline's Swagger UI, ReDoc and favicon
WEB_STATIC_URL = "/static/web"  # the page's script and style

# The page's own files may come only from this server; the page talks to nothing else either.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


# ReDoc's sidebar always shows a logo from cdn.redoc.ly (no option turns it off): images from
# elsewhere are refused by the browser, so the page asks no other host and looks the same offline.
REDOC_CSP = "img-src 'self' data: blob:"


def favicon_path() -> Path:
    """fastapi_offline's favicon, the one its docs pages link to."""
    return Path(str(files("fastapi_offline") / "static" / "favicon.png"))


@cache
def example_clips() -> dict[str, Path]:
    """Shipped example clips by name (file stem). Requests name a key of this table; a name is
    never joined onto a path, so no request reaches a file outside ``EXAMPLES_DIR``."""
    return {path.stem: path for path in sorted(EXAMPLES_DIR.glob("*.npy")) if path.is_file()}


def _npy_header(path: Path) -> tuple[tuple[int, ...], str]:
    array = np.load(path, mmap_mode="r", allow_pickle=False)  # maps the file: reads the header, not the pixels
    return tuple(array.shape), str(array.dtype)


router = APIRouter()


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers={"Content-Security-Policy": PAGE_CSP})


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    return FileResponse(favicon_path(), media_type="image/png")


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=request.app.title + " - ReDoc",
        redoc_js_url=f"{root}{DOCS_STATIC_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{DOCS_STATIC_URL}/favicon.png",
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = REDOC_CSP
    return page


@router.get("/v1/examples", summary="The example clips shipped with the service (inputs for the default model)")
async def list_examples() -> dict[str, Any]:
    clips = []
    for name, path in example_clips().items():
        shape, dtype = _npy_header(path)
        clips.append({"name": name, "url": f"/v1/examples/{name}", "shape": list(shape), "dtype": dtype})
    return {"examples": clips}


@router.get(
    "/v1/examples/{name}",
    summary="One example clip as .npy, by name (from GET /v1/examples)",
    response_class=FileResponse,
    responses={200: {"content": {NPY: {"schema": {"type": "string", "format": "binary"}}}}},
)
async def get_example(name: str) -> FileResponse:
    clips = example_clips()
    path = clips.get(name.removesuffix(".npy"))
    if path is None:
        raise NotFound("unknown-example", f"no example clip named {name!r}; available: {', '.join(clips) or 'none'}")
    return FileResponse(path, media_type=NPY, filename=path.name, content_disposition_type="inline")


def install(app: FastAPI) -> None:
    """Add the page, its files, the favicon and the example routes to ``app``."""
    app.mount(WEB_STATIC_URL, StaticFiles(directory=WEB_DIR), name="web")
    app.include_router(router)
