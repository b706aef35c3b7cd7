"""Helpers shared by the test packages: free ports, plain GETs, how Chromium is launched."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request

# Debian's Chromium; DEPLOYSYNC_CHROMIUM points elsewhere.
CHROMIUM = os.environ.get("DEPLOYSYNC_CHROMIUM", "/usr/bin/chromium")
# Running as root in a sandbox-less container, offline: no background traffic.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Status and body of a GET; any HTTP status is an answer, not an exception."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()
