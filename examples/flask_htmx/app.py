"""Flask + htmx (hx-boost) with deploysync.

Run it::

    cd examples/flask_htmx
    npm install                 # htmx -> static/vendor/htmx.min.js
    python app.py               # builds static/ into .deploysync/ and serves on :5000

Deploy a new frontend while a page is open (edit static/app.css first)::

    flask --app app deploysync build static --activate

The open page keeps working (type in Notes: nothing reloads); the next boosted click is
a full page load onto the new version. In production run it under gunicorn:
``gunicorn app:app`` with ``DEPLOYSYNC_STORE`` pointing at the store.
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from deploysync.contrib.flask import DeploySync

HERE = Path(__file__).resolve().parent
STATIC = Path(os.environ.get("EXAMPLE_STATIC", HERE / "static"))

STORE = os.environ.get("DEPLOYSYNC_STORE") or str(HERE / ".deploysync")
if "://" not in STORE:
    os.makedirs(STORE, exist_ok=True)  # an empty store until the first build

app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
app.config.update(
    DEPLOYSYNC_STORE=STORE,
    # htmx navigates (hx-boost); deploysync watches and turns the next navigation after a
    # deploy into a full page load.
    DEPLOYSYNC_ROUTING="external",
)
deploysync = DeploySync(app)
NOTES: list[str] = []


@app.context_processor
def deployment() -> dict[str, str]:
    current = DeploySync.middleware().runtime.deployment
    return {"deployment_id": current.id if current else "none"}


@app.get("/")
def index() -> str:
    return render_template("index.html")


@app.get("/about")
def about() -> str:
    return render_template("about.html")


@app.route("/notes", methods=["GET", "POST"])
def notes() -> str | Response:
    if request.method == "POST":
        NOTES.append(request.form.get("text", ""))
        return redirect(url_for("notes"), 303)
    return render_template("notes.html", notes=NOTES)


def main() -> None:
    from deploysync.build import build

    if not (STATIC / "vendor" / "htmx.min.js").exists():
        print("htmx is missing: run `npm install` in", HERE)
    result = build(STATIC, STORE, activate=True)
    DeploySync.middleware(app).runtime.refresh()  # no need to wait for the next poll
    print("deployment", result.deployment.id, "is current")
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))


if __name__ == "__main__":
    main()
