"""The responder console: static files under ``/ui/``, and the security headers of every answer.

The files ship inside the package (``services/download/static``), are read once at start-up
and served from memory: no CDN, nothing fetched at run time, no path from the URL ever
reaches the file system (a name is looked up in the loaded set, or 404). The console is
plain HTML, CSS and ES modules; it puts every string it shows into the page with
``textContent``, and the Content-Security-Policy below makes sure nothing else can:
scripts only from this origin, no inline script or style, and Trusted Types required, so
an ``innerHTML`` assignment throws instead of parsing a name as HTML.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

STATIC = web.AppKey("ui_static", dict)

UI_CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
# API answers are data, never a page: a browser that renders one anyway runs nothing.
API_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


def load_static() -> dict[str, tuple[bytes, str]]:
    """Every file of the console, by name: (bytes, content type)."""
    files: dict[str, tuple[bytes, str]] = {}
    for item in (resources.files("services.download") / "static").iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in _TYPES:
            files[item.name] = (item.read_bytes(), _TYPES[suffix])
    return files


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    ui = request.path.startswith("/ui/")
    headers.setdefault("Content-Security-Policy", UI_CSP if ui else API_CSP)
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Frame-Options"] = "DENY"
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    if ui:
        headers.setdefault("Cache-Control", "no-cache")


async def redirect_to_ui(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info.get("name") or "index.html"
    found = request.app[STATIC].get(name)
    if found is None:
        raise web.HTTPNotFound()
    body, content_type = found
    return web.Response(body=body, headers={"Content-Type": content_type})


def setup_ui(app: web.Application) -> None:
    app[STATIC] = load_static()
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/", redirect_to_ui, name="root")
    app.router.add_get("/ui", redirect_to_ui, name="ui_redirect")
    app.router.add_get("/ui/", static_file, name="ui")
    app.router.add_get("/ui/{name:[A-Za-z0-9_.-]+}", static_file, name="ui_file")
