"""The server of the Vite example: Starlette renders the shell, Vite built the assets.

Run it::

    cd examples/vite_app
    npm install && npm run build                       # dist/ with .vite/manifest.json
    deploysync build dist --store .deploysync --activate   # Vite's names are kept as they are
    uvicorn server:app                                 # or: python server.py

Every path renders the same shell (the app routes on the client with pushState); the
shell's tags come from the deployment's Vite manifest through ``vite_tags``.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from deploysync.contrib.starlette import DeploySync, install_templates

HERE = Path(__file__).resolve().parent
STORE = os.environ.get("DEPLOYSYNC_STORE", str(HERE / ".deploysync"))

templates = Jinja2Templates(directory=HERE / "templates")
install_templates(templates)


async def shell(request: Request) -> Response:
    return templates.TemplateResponse(request, "index.html")


app = Starlette(
    routes=[Route("/{path:path}", shell)],
    # The app's own router navigates with pushState: deploysync watches ("external") and,
    # once the page is outdated (a lazy chunk that 404s after a prune, say), makes the next
    # navigation a full page load.
    middleware=[Middleware(DeploySync, store=STORE, routing="external")],
)


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
