"""Tags for a Vite entry point, from the Vite manifest recorded in a deployment.

``deploysync build DIST --vite`` keeps Vite's own ``.vite/manifest.json`` in
``Deployment.extra["vite"]`` (Vite's hashed file names are trusted as they are, so there
is no second hash). :func:`vite_tags` renders what Vite's backend-integration guide asks a
server to emit for an entry (https://vite.dev/guide/backend-integration):

* a ``<link rel="stylesheet">`` for the CSS of the entry, then of every chunk it imports
  statically, recursively;
* the entry's ``<script type="module">``;
* a ``<link rel="modulepreload">`` for every statically imported chunk, recursively, so
  the browser fetches them in parallel instead of discovering them one import at a time.

Dynamic imports (lazy routes) are left out on purpose: they load when the app asks.
Every URL is deduplicated and resolved through the deployment, so it points at the
deployment the page was rendered against.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from html import escape
from typing import Any

from .manifest import Deployment, DeploySyncError, url_path

__all__ = ["ViteError", "imported_chunks", "vite_manifest", "vite_tags", "vite_urls"]

logger = logging.getLogger("deploysync.vite")


class ViteError(DeploySyncError, LookupError):
    """The deployment has no Vite manifest, or the entry is not in it."""


Chunk = Mapping[str, Any]


def vite_manifest(deployment: Deployment) -> Mapping[str, Chunk]:
    """The Vite manifest recorded in *deployment*; ``ViteError`` when there is none."""
    recorded = deployment.extra.get("vite")
    if isinstance(recorded, Mapping) and isinstance(recorded.get("manifest"), Mapping):
        # Tolerate a wrapper object ({"manifest": {...}, ...}) as well as the bare manifest.
        recorded = recorded["manifest"]
    if not isinstance(recorded, Mapping) or not recorded:
        raise ViteError(
            f"Deployment {deployment.id} has no Vite manifest: build it with "
            "'deploysync build DIST --vite' from a Vite build made with build.manifest = true"
        )
    return recorded


def imported_chunks(manifest: Mapping[str, Chunk], key: str) -> list[Chunk]:
    """The chunks *key* imports statically, recursively, each once, dependencies first
    (the ``importedChunks`` of Vite's backend-integration guide)."""
    seen = {key}
    found: list[Chunk] = []

    def walk(chunk: Chunk) -> None:
        for name in chunk.get("imports") or ():
            if not isinstance(name, str) or name in seen:
                continue
            seen.add(name)
            importee = manifest.get(name)
            if isinstance(importee, Mapping) and "file" in importee:
                walk(importee)
                found.append(importee)

    walk(manifest[key])
    return found


def _url(deployment: Deployment, file: str, prefix: str) -> str:
    # Vite's files keep their names in the deployment, so the logical path is Vite's
    # "file"; a file missing from the deployment still gets a usable (unhashed) URL.
    try:
        url = deployment.url(file)
    except KeyError:
        url = deployment.static_url + url_path(file.lstrip("/"))
    return prefix + url if prefix and url.startswith("/") else url


def vite_urls(
    entry: str, deployment: Deployment, *, prefix: str = ""
) -> tuple[str, list[str], list[str]]:
    """``(script_or_stylesheet_url, css_urls, modulepreload_urls)`` of *entry*.

    The first item is the entry's own file. For a CSS entry it is a stylesheet and is not
    repeated in the CSS list. *prefix*: the URL path the app is mounted at
    (:func:`~deploysync.serving.mount_prefix`), put before URLs of the site's own host.
    """
    manifest = vite_manifest(deployment)
    key = entry.lstrip("/")
    chunk = manifest.get(key)
    if not isinstance(chunk, Mapping) or "file" not in chunk:
        entries = sorted(
            k for k, v in manifest.items() if isinstance(v, Mapping) and v.get("isEntry")
        )
        raise ViteError(
            f"Vite entry {entry!r} is not in the manifest of deployment {deployment.id} "
            f"(entries: {', '.join(entries) or 'none'})"
        )
    css: list[str] = []
    seen_css: set[str] = set()
    imported = imported_chunks(manifest, key)
    for current in (chunk, *imported):
        for file in current.get("css") or ():
            if isinstance(file, str) and file not in seen_css:
                seen_css.add(file)
                css.append(_url(deployment, file, prefix))
    preload = [_url(deployment, str(c["file"]), prefix) for c in imported]
    main = _url(deployment, str(chunk["file"]), prefix)
    return main, css, preload


def _attr(name: str, value: str | None) -> str:
    return f' {name}="{escape(value, quote=True)}"' if value else ""


def vite_tags(
    entry: str,
    deployment: Deployment,
    nonce: str | None = None,
    *,
    strict: bool = True,
    prefix: str = "",
) -> str:
    """HTML for the Vite *entry* (``"src/main.ts"``) of *deployment*, for an app mounted
    at *prefix* (see :func:`vite_urls`).

    With ``strict=False`` an unknown entry or a deployment without a Vite manifest gives an
    HTML comment and a logged error instead of an exception, so a page never fails to
    render in production because of it.
    """
    try:
        main, css, preload = vite_urls(entry, deployment, prefix=prefix)
    except ViteError as exc:
        if strict:
            raise
        logger.error("%s", exc)
        return f"<!-- deploysync: Vite entry {escape(entry.replace('--', ''))} not found -->"
    nonce_attr = _attr("nonce", nonce)
    tags = [f'<link rel="stylesheet"{_attr("href", url)}{nonce_attr}>' for url in css]
    if main.split("?", 1)[0].endswith(".css"):
        if main not in css:
            tags.insert(0, f'<link rel="stylesheet"{_attr("href", main)}{nonce_attr}>')
    else:
        tags.append(f'<script type="module"{_attr("src", main)}{nonce_attr}></script>')
    tags.extend(f'<link rel="modulepreload"{_attr("href", url)}{nonce_attr}>' for url in preload)
    return "\n".join(tags)
