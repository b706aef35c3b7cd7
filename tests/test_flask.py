"""The Flask extension, in-process with Flask's test client and CLI runner."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify, render_template_string, request, url_for

from deploysync.build import build
from deploysync.contrib.flask import EXTENSION, DeploySync
from deploysync.manifest import Deployment, DeploySyncError
from deploysync.serving import UnknownAsset
from deploysync.store import FileStore

PAGE = """<!doctype html><html><head><title>t</title>
<link rel="stylesheet" href="{{ url_for('static', filename='css/app.css') }}"></head>
<body><script type="module" src="{{ asset_url('js/app.js') }}"></script></body></html>"""


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


@pytest.fixture
def deployed(site_src: Callable[..., Path], store: FileStore) -> Deployment:
    return build(site_src("v1"), store, activate=True).deployment


def make_app(store: FileStore, **config: Any) -> Flask:
    # The app's own static folder is never reached for hashed URLs: the middleware
    # answers them. It serves unhashed fallbacks, as without deploysync.
    static = Path(str(store.root) + "-static")
    static.mkdir(exist_ok=True)
    app = Flask(__name__, static_folder=str(static), static_url_path="/static")
    app.config.update(DEPLOYSYNC_STORE=str(store.root), **config)
    app.extensions["calls"] = 0

    @app.get("/")
    def index() -> str:
        return render_template_string(PAGE)

    @app.post("/submit")
    def submit() -> str:
        app.extensions["calls"] += 1
        return "<!doctype html><p>saved</p>"

    @app.get("/api")
    def api() -> Any:
        return jsonify(ok=True)

    @app.get("/manual")
    def manual() -> str:
        return render_template_string(
            "<!doctype html><html><head>{{ deploysync_head() }}</head><body></body></html>"
        )

    return app


@pytest.fixture
def app(store: FileStore, deployed: Deployment, site_src: Callable[..., Path]) -> Flask:
    app = make_app(store)
    DeploySync(app)
    return app


def test_html_page_announces_the_deployment(app: Flask, deployed: Deployment) -> None:
    response = app.test_client().get("/")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert response.headers["X-Deployment-Id"] == deployed.id
    assert response.headers["Cache-Control"] == "no-cache"
    assert f'<meta name="deployment-id" content="{deployed.id}">' in html
    script = r'<script type="module" src="/_deploysync/client-[0-9a-f]+\.js" data-deploysync'
    assert re.search(script, html)
    assert int(response.headers["Content-Length"]) == len(response.get_data())


def test_url_for_static_and_asset_url_give_hashed_urls(app: Flask, deployed: Deployment) -> None:
    html = app.test_client().get("/").get_data(as_text=True)
    assert f'href="{deployed.url("css/app.css")}"' in html
    assert f'src="{deployed.url("js/app.js")}"' in html
    assert deployed.url("css/app.css") != "/static/css/app.css"
    with app.test_request_context():
        assert url_for("static", filename="css/app.css", _external=True) == (
            "http://localhost" + deployed.url("css/app.css")
        )


def test_hashed_url_is_served_by_the_middleware(app: Flask, deployed: Deployment) -> None:
    response = app.test_client().get(deployed.url("css/app.css"))
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert response.headers["ETag"].startswith('"')


def test_url_for_names_with_reserved_characters_once_encoded(
    tmp_path: Path, store: FileStore
) -> None:
    src = tmp_path / "odd"
    (src / "ü").mkdir(parents=True)
    (src / "sp ace#1.css").write_text("p{}")
    (src / "ü" / "x.css").write_text("b{}")
    deployment = build(src, store, activate=True).deployment
    app = make_app(store)
    DeploySync(app)
    client = app.test_client()
    with app.test_request_context():
        for path in ("sp ace#1.css", "ü/x.css"):
            url = url_for("static", filename=path)
            assert url == deployment.url(path)  # encoded once: %20, %23, %C3%BC
            assert client.get(url).status_code == 200
        assert url_for("static", filename="nö such.css") == "/static/n%C3%B6%20such.css"


def test_unknown_static_file_falls_back_to_unhashed_url(app: Flask) -> None:
    with app.test_request_context():
        assert url_for("static", filename="missing.css") == "/static/missing.css"


def test_unknown_static_file_raises_in_debug(
    store: FileStore, deployed: Deployment, site_src: Callable[..., Path]
) -> None:
    app = make_app(store, DEBUG=True)
    DeploySync(app)
    with app.test_request_context(), pytest.raises(UnknownAsset, match=r"missing\.css"):
        url_for("static", filename="missing.css")


def test_nothing_built_yet_gives_unhashed_urls_in_debug_too(tmp_path: Path) -> None:
    # A fresh checkout under `flask run --debug`: every name is unknown, none mistyped.
    app = make_app(FileStore(tmp_path / "store"), DEBUG=True)
    DeploySync(app)
    with app.test_request_context():
        assert url_for("static", filename="css/site.css") == "/static/css/site.css"
        assert app.jinja_env.globals["asset_url"]("css/site.css") == "/static/css/site.css"
    assert app.test_client().get("/").status_code == 200


def test_plain_names_serve_the_static_folder_as_edited(
    store: FileStore, deployed: Deployment
) -> None:
    """``DEPLOYSYNC_PLAIN_NAMES`` (the ``flask run --debug`` loop): plain URLs, each file
    served as it is on disk after every edit; hashed URLs of deployments still served,
    and nothing outside the static folder."""
    app = make_app(store, DEBUG=True, DEPLOYSYNC_PLAIN_NAMES=True)
    DeploySync(app)
    static = Path(app.static_folder or "")
    (static / "css").mkdir()
    css = static / "css" / "app.css"
    css.write_text("p { color: red }")
    (static.parent / "secret.txt").write_text("secret")
    client = app.test_client()
    with app.test_request_context():
        assert url_for("static", filename="css/app.css") == "/static/css/app.css"
        assert app.jinja_env.globals["asset_url"]("css/app.css") == "/static/css/app.css"
        # A file not there yet (mistyped or not made yet): no error, as without deploysync.
        assert url_for("static", filename="css/new.css") == "/static/css/new.css"
        # Only in the deployment (built from another folder): its hashed URL.
        assert url_for("static", filename="js/app.js") == deployed.url("js/app.js")
        assert app.jinja_env.globals["asset_url"]("js/app.js") == deployed.url("js/app.js")
    page = client.get("/")
    assert 'href="/static/css/app.css"' in page.get_data(as_text=True)
    assert f'content="{deployed.id}"' in page.get_data(as_text=True)

    def served(path: str) -> str:
        with client.get(path) as response:
            return response.get_data(as_text=True)

    assert served("/static/css/app.css") == "p { color: red }"
    css.write_text("p { color: blue }")
    assert served("/static/css/app.css") == "p { color: blue }"
    (static / "css" / "café.css").write_text("p { color: green }")
    with app.test_request_context():
        cafe = url_for("static", filename="css/café.css")
    assert cafe == "/static/css/caf%C3%A9.css"
    assert served(cafe) == "p { color: green }"
    assert client.get(deployed.url("css/app.css")).status_code == 200
    for path in ("/static/../secret.txt", "/static/%2e%2e/secret.txt", "/static/nope.css"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert b"secret" not in response.get_data()


def test_an_app_without_a_static_folder_serves_the_default_prefix(
    store: FileStore, deployed: Deployment
) -> None:
    app = Flask(__name__, static_folder=None)
    app.config.update(DEPLOYSYNC_STORE=str(store.root))
    DeploySync(app)  # no "Invalid static URL '/'": there is no static URL of its own
    with app.test_request_context():
        assert app.jinja_env.globals["asset_url"]("css/app.css") == deployed.url("css/app.css")
    assert app.test_client().get(deployed.url("css/app.css")).status_code == 200


def test_an_app_serving_static_files_at_its_root_is_refused_at_set_up(store: FileStore) -> None:
    # static_url_path="" has a static URL (every URL): said, not replaced by /static/.
    app = Flask(__name__, static_url_path="")
    app.config.update(DEPLOYSYNC_STORE=str(store.root))
    with pytest.raises(DeploySyncError, match="'/'"):
        DeploySync(app)


def test_stale_navigation_gets_409_and_the_view_is_not_called(
    app: Flask, deployed: Deployment
) -> None:
    response = app.test_client().post(
        "/submit", headers={"X-Deploysync": "navigate", "X-Deployment-Id": "old-page-id"}
    )
    assert response.status_code == 409
    assert response.headers["X-Deploysync"] == "reload"
    assert response.headers["X-Deployment-Id"] == deployed.id
    assert response.get_data() == b""
    assert app.extensions["calls"] == 0
    fresh = app.test_client().post(
        "/submit", headers={"X-Deploysync": "navigate", "X-Deployment-Id": deployed.id}
    )
    assert fresh.status_code == 200 and app.extensions["calls"] == 1


def test_json_passes_through_untouched(app: Flask) -> None:
    response = app.test_client().get("/api")
    assert response.get_json() == {"ok": True}
    assert "X-Deployment-Id" not in response.headers


def test_manual_placement_is_not_injected_twice(app: Flask, deployed: Deployment) -> None:
    html = app.test_client().get("/manual").get_data(as_text=True)
    assert html.count('name="deployment-id"') == 1
    assert html.count("data-deploysync") == 1


def test_factory_pattern_and_state_in_extensions(store: FileStore, deployed: Deployment) -> None:
    ext = DeploySync(routing="client", check_interval=30)
    app = make_app(store)
    ext.init_app(app)
    assert app.extensions[EXTENSION].runtime.routing == "client"
    response = app.test_client().get("/")
    assert response.status_code == 200
    assert 'data-routing="client" data-check-interval="30"' in response.get_data(as_text=True)
    with app.app_context():
        assert ext.url("js/app.js") == deployed.url("js/app.js")


def test_config_wins_over_constructor_defaults(store: FileStore, deployed: Deployment) -> None:
    app = make_app(store, DEPLOYSYNC_ROUTING="external")
    DeploySync(app, routing="client")
    assert app.extensions[EXTENSION].runtime.routing == "external"


def test_missing_store_fails_at_init(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEPLOYSYNC_STORE", raising=False)
    with pytest.raises(DeploySyncError, match="DEPLOYSYNC_STORE"):
        DeploySync(Flask(__name__))


def test_csp_nonce_from_the_request(store: FileStore, deployed: Deployment) -> None:
    app = make_app(store, DEPLOYSYNC_NONCE="csp_nonce")

    @app.before_request
    def set_nonce() -> None:
        request.csp_nonce = "n0nce"  # type: ignore[attr-defined]  # as flask-talisman does

    DeploySync(app)
    response = app.test_client().get("/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert re.search(r'<script type="module" src="/_deploysync/[^"]+"[^>]* nonce="n0nce">', html)


def test_a_new_deployment_is_picked_up(
    app: Flask, store: FileStore, site_src: Callable[..., Path]
) -> None:
    v2 = build(site_src("v2"), store, activate=True).deployment
    app.extensions[EXTENSION].runtime.refresh()
    response = app.test_client().get("/")
    assert response.headers["X-Deployment-Id"] == v2.id
    assert f'href="{v2.url("css/app.css")}"' in response.get_data(as_text=True)


def test_cli_build_activate_list_prune(
    app: Flask, store: FileStore, deployed: Deployment, site_src: Callable[..., Path]
) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(args=["deploysync", "build", str(site_src("v2"))])
    assert result.exit_code == 0, result.output
    new_id = result.output.strip().splitlines()[-1]
    assert store.exists(new_id) and store.current() == deployed.id
    result = runner.invoke(args=["deploysync", "activate", new_id])
    assert result.exit_code == 0, result.output
    assert store.current() == new_id
    result = runner.invoke(args=["deploysync", "list", "--json"])
    assert result.exit_code == 0 and new_id in result.output and deployed.id in result.output
    result = runner.invoke(args=["deploysync", "prune", "--keep", "1"])
    assert result.exit_code == 0, result.output
    assert not store.exists(deployed.id)


def test_cli_help_names_the_flask_command(app: Flask, capsys: pytest.CaptureFixture[str]) -> None:
    result = app.test_cli_runner().invoke(args=["deploysync", "build", "--help"])
    out = result.output + capsys.readouterr().out  # argparse writes to sys.stdout
    assert result.exit_code == 0 and out.startswith("usage: flask deploysync build "), out


def test_cli_errors_exit_non_zero(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["deploysync", "activate", "no-such-id"])
    assert result.exit_code != 0


def test_a_store_not_built_yet_is_said_by_a_server_not_by_a_command(
    tmp_path: Path, site_src: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    store = FileStore(tmp_path / "new-store")
    app = make_app(store, DEPLOYSYNC_POLL_INTERVAL=0.05)
    DeploySync(app)
    # `flask deploysync build` loads the app first: nothing to say about the store yet.
    result = app.test_cli_runner().invoke(args=["deploysync", "build", str(site_src("v1"))])
    assert result.exit_code == 0, result.output
    assert "Cannot read" not in result.output and not caplog.records
    # A server serving before any build says so at its first request.
    other = make_app(FileStore(tmp_path / "never-built"), DEPLOYSYNC_POLL_INTERVAL=0.05)
    DeploySync(other)
    assert not caplog.records
    try:
        other.test_client().get("/")
        deadline = time.monotonic() + 5
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.02)
        messages = [r.getMessage() for r in caplog.records]
        assert messages == [
            f"Cannot read deploysync store {tmp_path / 'never-built'}: Store directory"
            f" '{tmp_path / 'never-built'}' does not exist; no deployment is served until"
            " it can be read"
        ]
    finally:
        other.extensions[EXTENSION].close()


APP_MODULE = """
import os
from flask import Flask
from deploysync.contrib.flask import DeploySync

app = Flask(__name__)
app.config["DEPLOYSYNC_STORE"] = os.environ["STORE"]
if os.environ.get("CDN"):
    app.config["DEPLOYSYNC_STATIC_URL"] = os.environ["CDN"]
DeploySync(app)
"""


def test_flask_commands_run_while_the_static_url_differs_from_the_deployments(
    tmp_path: Path, site_src: Callable[..., Path]
) -> None:
    # The app moves to a CDN: the current deployment was built for /static/. The
    # commands that repair this (a build for the new URL) load the app first.
    (tmp_path / "cdnapp.py").write_text(APP_MODULE)
    store = tmp_path / "store"
    build(site_src("v1"), store, activate=True)
    cdn = "https://cdn.example.com/static/"
    env = {**os.environ, "STORE": str(store), "CDN": cdn, "PYTHONPATH": str(tmp_path)}

    def flask(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "flask", "--app", "cdnapp", *args]
        return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)

    done = flask("routes")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("deploysync: warning: Deployment ")
    assert f"serves assets under '{cdn}'" in done.stderr
    done = flask("deploysync", "build", str(site_src("v2")), "--activate")
    assert done.returncode == 0, done.stderr
    new = done.stdout.splitlines()[-1]
    assert FileStore(store).load(new).static_url == cdn
    assert FileStore(store).current() == new
    done = flask("deploysync", "list")
    assert done.returncode == 0 and new in done.stdout and not done.stderr
    # A server loading the app outside a command still refuses to start on a mismatch.
    env["CDN"] = ""
    done = subprocess.run(
        [sys.executable, "-c", "import cdnapp"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "DeploySyncError" in done.stderr
    assert f"built for the static URL '{cdn}'" in done.stderr


def test_flask_commands_given_a_store_run_when_the_app_has_none(tmp_path: Path) -> None:
    # An app whose store comes from the environment, not set here: `--store` names it.
    (tmp_path / "nostore.py").write_text(
        "from flask import Flask\n"
        "from deploysync.contrib.flask import DeploySync\n"
        "app = Flask(__name__)\n"
        "DeploySync(app)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DEPLOYSYNC_STORE"}
    env["PYTHONPATH"] = str(tmp_path)
    store = tmp_path / "store"
    command = [sys.executable, "-m", "flask", "--app", "nostore", "deploysync", "list"]
    done = subprocess.run(
        [*command, "--store", str(store)], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("deploysync: warning: deploysync has no store")
    assert done.stderr.count("\n") <= 2, done.stderr


def _mismatched_app(store: FileStore, site_src: Callable[..., Path]) -> Flask:
    build(site_src("v1"), store, activate=True)  # for /static/
    app = make_app(store, DEPLOYSYNC_STATIC_URL="https://cdn.example.com/static/")
    app.testing = True
    return app


def test_a_server_that_is_a_click_program_still_refuses_a_mismatch(
    store: FileStore, site_src: Callable[..., Path]
) -> None:
    # uvicorn's and granian's command lines are click programs too: only the flask
    # command line (its ScriptInfo) lets the app load.
    import click
    from click.testing import CliRunner

    app = _mismatched_app(store, site_src)

    @click.command()
    def serve() -> None:
        DeploySync(app)

    result = CliRunner().invoke(serve)
    assert isinstance(result.exception, DeploySyncError)


def test_an_app_loaded_by_a_flask_command_raises_the_same_short_error_each_request(
    store: FileStore, site_src: Callable[..., Path]
) -> None:
    import click
    from flask.cli import ScriptInfo

    app = _mismatched_app(store, site_src)
    with click.Context(click.Command("run"), obj=ScriptInfo()):
        DeploySync(app)
    depths = []
    for _ in range(3):
        with pytest.raises(DeploySyncError, match="built for the static URL") as caught:
            app.test_client().get("/")
        depths.append(len(traceback.extract_tb(caught.value.__traceback__)))
    assert depths[0] == depths[1] == depths[2], depths


def test_url_for_static_with_a_cdn_static_url(
    store: FileStore, site_src: Callable[..., Path]
) -> None:
    # The CDN pulls from the app's own /static/: url_for gives the hashed URL on the app
    # (served there), asset_url() the CDN's.
    cdn = "https://cdn.example.com/static/"
    v1 = build(site_src("v1"), store, static_url=cdn, activate=True).deployment
    app = make_app(store, DEPLOYSYNC_STATIC_URL=cdn)
    DeploySync(app)
    with app.test_request_context("/"):
        local = url_for("static", filename="css/app.css")
        assert local == "/static/" + v1.assets["css/app.css"].name
        assert app.jinja_env.globals["asset_url"]("css/app.css") == v1.url("css/app.css")
        assert v1.url("css/app.css").startswith(cdn)
    assert app.test_client().get(local).status_code == 200
    # A CDN under another path: the app's static view is Flask's own, url_for is left alone.
    other = Path(str(store.root) + "-other")
    v2 = build(site_src("v1"), other, static_url="https://cdn.example.com/assets/", activate=True)
    app2 = make_app(FileStore(other), DEPLOYSYNC_STATIC_URL="https://cdn.example.com/assets/")
    DeploySync(app2)
    with app2.test_request_context("/"):
        assert url_for("static", filename="css/app.css") == "/static/css/app.css"
    assert v2.deployment.static_url == "https://cdn.example.com/assets/"
