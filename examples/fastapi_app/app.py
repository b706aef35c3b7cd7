"""FastAPI + Jinja templates with deploysync and its own client router.

Run it::

    python examples/fastapi_app/app.py        # builds static/ into .deploysync/, serves :8000

or under uvicorn (the store must have a current deployment)::

    DEPLOYSYNC_STORE=.deploysync uvicorn app:app

Deploy a new frontend while a page is open (edit static/app.css first)::

    deploysync build static --store .deploysync --activate
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from deploysync.contrib.starlette import DeploySync, install_templates

HERE = Path(__file__).resolve().parent
STATIC = Path(os.environ.get("EXAMPLE_STATIC", HERE / "static"))
STORE = os.environ.get("DEPLOYSYNC_STORE", str(HERE / ".deploysync"))

app = FastAPI()
# deploysync's own router: links and forms are fetched and swapped; after a deploy the
# next one is a full page load.
app.add_middleware(DeploySync, store=STORE, routing="client")
templates = Jinja2Templates(directory=HERE / "templates")
install_templates(templates)
NOTES: list[str] = []


def render(request: Request, name: str, **context: Any) -> Response:
    deployment = request.scope["deploysync"].runtime.deployment
    context["deployment_id"] = deployment.id if deployment else "none"
    return templates.TemplateResponse(request, name, context)


@app.get("/", response_class=HTMLResponse)
def index(request: Request) -> Response:
    return render(request, "index.html")


@app.get("/about", response_class=HTMLResponse)
def about(request: Request) -> Response:
    return render(request, "about.html")


@app.get("/notes", response_class=HTMLResponse)
def notes(request: Request) -> Response:
    return render(request, "notes.html", notes=NOTES)


@app.post("/notes")
async def add_note(request: Request) -> Response:
    # A urlencoded form, read without the python-multipart dependency.
    form = parse_qs((await request.body()).decode())
    NOTES.append(form.get("text", [""])[0])
    return RedirectResponse("/notes", status_code=303)


def main() -> None:
    import uvicorn

    from deploysync.build import build

    result = build(STATIC, STORE, activate=True)
    print("deployment", result.deployment.id, "is current")
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))


if __name__ == "__main__":
    main()
