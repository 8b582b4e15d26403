"""Swagger UI for the admin API at ``/admin/docs``, with its assets served by the gateway (no CDN).

The assets come from the ``swagger-ui-bundle-v2`` package. The page loads only the gateway's own
URLs, and its Content-Security-Policy says so.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Lockgate admin API</title>
  <link rel="stylesheet" href="{base}/docs/assets/swagger-ui.css">
  <link rel="icon" type="image/png" href="{base}/docs/assets/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{base}/docs/assets/swagger-ui-bundle.js"></script>
  <script src="{base}/docs/init.js"></script>
</body>
</html>
"""

_INIT = """window.ui = SwaggerUIBundle({{
  url: "{base}/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  persistAuthorization: false,
  displayRequestDuration: true,
}});
"""


def assets_directory() -> Path:
    import swagger_ui_bundle

    return Path(str(swagger_ui_bundle.swagger_ui_path))


def assets() -> StaticFiles:
    return StaticFiles(directory=assets_directory())


def _base(request: Request) -> str:
    """Where the admin app is mounted (``/admin``, behind any proxy prefix)."""
    return str(request.scope.get("root_path", "")).rstrip("/") or "/admin"


async def page(request: Request) -> Response:
    return Response(
        _PAGE.format(base=_base(request)),
        media_type="text/html",
        headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"},
    )


async def init_script(request: Request) -> Response:
    return Response(_INIT.format(base=_base(request)), media_type="text/javascript")
