"""Value objects of a deployment: its assets, its manifest and its id.

A deployment is immutable. Its id is derived from its manifest (the same input gives the
same id, any byte change gives another), unless the user supplies one (a git SHA, say).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, urlsplit

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# What no asset name holds: a backslash or a control character (see is_safe_name).
# A control character or backslash anywhere, or an empty, "." or ".." segment (a leading
# "/" makes the first one empty).
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f\\]|(?:^|/)\.{0,2}(?:/|$)")
MANIFEST_VERSION = 1
DEFAULT_STATIC_URL = "/static/"
# What a static URL's path may hold: RFC 3986 path characters (pchar) other than
# percent-escapes, since servers match the decoded request path against the prefix.
_PATH_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@"
)
# The host (and port) of an absolute static URL.
_HOST = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


class DeploySyncError(Exception):
    """Base class of the errors deploysync raises on bad input or configuration."""


class InvalidId(DeploySyncError, ValueError):
    """A deployment id that does not match ``[A-Za-z0-9_-]{1,64}``."""


class ManifestError(DeploySyncError, ValueError):
    """A manifest that cannot be read."""


def is_valid_id(value: object) -> bool:
    """True when *value* is a syntactically valid deployment id."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def validate_id(value: str) -> str:
    """Return *value* when it is a valid deployment id; raise :class:`InvalidId` otherwise."""
    if not is_valid_id(value):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise InvalidId(f"Invalid deployment id {shown!r}: ids match [A-Za-z0-9_-]{{1,64}}")
    return value


# What a URL path keeps as it is besides letters, digits, "-._~" and "/" (RFC 3986 pchar).
URL_PATH_SAFE = "/@!$&*+,;="


def url_path(name: str) -> str:
    """A file's *name* as a URL path: spaces, ``#``, ``?``, ``%`` and non-ASCII encoded
    (a name that is not UTF-8 keeps its bytes, as :func:`os.fsencode` gives them)."""
    return quote(name, safe=URL_PATH_SAFE, errors="surrogateescape")


def is_safe_name(name: str) -> bool:
    """Whether *name* (a logical path, or a hashed one below the static prefix) can be
    an asset's name at all: a server leaves other names out of its index (a second line,
    as the index is only ever a dict lookup), so a build refuses them.

    Not: empty, absolute, over 1,024 characters, with a drive letter's colon, a
    backslash, a control character, or an empty, ``.`` or ``..`` segment.
    """
    return 0 < len(name) <= 1024 and ":" not in name[:3] and _UNSAFE_NAME.search(name) is None


def normalize_static_url(static_url: str) -> str:
    """``"static"`` -> ``"/static/"``; an absolute URL (a CDN) keeps its scheme and host.

    Raises :class:`DeploySyncError` for a prefix no asset URL could be served under.
    """
    if not static_url:
        raise DeploySyncError("The static URL prefix must not be empty")
    bad = f"Invalid static URL {static_url!r}:"
    for char in "?#":
        if char in static_url:
            raise DeploySyncError(f"{bad} a prefix cannot contain {char!r}")
    base, path = "", static_url
    if "://" in static_url:
        try:
            parts = urlsplit(static_url)
        except ValueError as exc:  # an unclosed IPv6 bracket
            raise DeploySyncError(f"{bad} {exc}") from None
        if parts.scheme not in ("http", "https") or not _HOST.fullmatch(parts.netloc):
            raise DeploySyncError(f"{bad} use a path or an http(s):// URL with a host")
        base, path = f"{parts.scheme}://{parts.netloc}", parts.path
    elif static_url.startswith("//"):
        raise DeploySyncError(f"{bad} '//' starts a host name; write https://HOST/PATH")
    if not path.startswith("/"):
        path = "/" + path
    if not path.endswith("/"):
        path += "/"
    if path == "/":
        # Every URL of the site would be under it: the app's pages would answer 404.
        raise DeploySyncError(
            f"{bad} the prefix '/' would take every URL of the site; use a folder (/static/)"
        )
    # Browsers resolve '.' and '..' away, and servers merge '//': the request would
    # never carry the prefix the page names.
    if "//" in path:
        raise DeploySyncError(f"{bad} a path cannot contain '//'")
    for segment in path[1:-1].split("/") if path != "/" else ():
        if segment in (".", ".."):
            raise DeploySyncError(f"{bad} a path segment cannot be {segment!r}")
        for char in segment:
            if char not in _PATH_CHARS:
                raise DeploySyncError(
                    f"{bad} {char!r} cannot be part of a URL path prefix"
                    " (use letters, digits and -._~!$&'()*+,;=:@)"
                )
    return base + path


# A string as JSON text, the way json.dumps(value, ensure_ascii=False) writes it.
_json_text: Callable[[str], str] = json.encoder.encode_basestring


@dataclass(frozen=True, slots=True)
class Asset:
    """One file of a deployment.

    ``name`` is the hashed path below the static prefix (``css/app.3f9a2c1b7d4e.css``);
    ``digest`` is the sha256 (hex) of the stored bytes, the key of the blob in the store.
    ``encodings`` lists the precompressed variants kept, with their sizes.
    """

    path: str
    name: str
    digest: str
    size: int
    content_type: str
    integrity: str
    encodings: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "digest": self.digest,
            "size": self.size,
            "content_type": self.content_type,
            "integrity": self.integrity,
            "encodings": dict(self.encodings),
        }

    @classmethod
    def from_json(cls, path: str, data: Mapping[str, Any]) -> Asset:
        try:
            return cls._of(
                path,
                str(data["name"]),
                str(data["digest"]),
                int(data["size"]),
                str(data["content_type"]),
                str(data["integrity"]),
                MappingProxyType(
                    {str(k): int(v) for k, v in dict(data.get("encodings", {})).items()}
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"Malformed manifest entry for {path!r}: {exc}") from None

    @classmethod
    def _of(
        cls,
        path: str,
        name: str,
        digest: str,
        size: int,
        content_type: str,
        integrity: str,
        encodings: Mapping[str, int],
    ) -> Asset:
        """An asset from values of the right types, made without ``__init__``.

        A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``
        (a lookup by name per field); builds and manifest reads make thousands of
        assets, and setting the slots directly takes a third less time.
        """
        asset = _new_object(cls)
        _set_path(asset, path)
        _set_name(asset, name)
        _set_digest(asset, digest)
        _set_size(asset, size)
        _set_content_type(asset, content_type)
        _set_integrity(asset, integrity)
        _set_encodings(asset, encodings)
        return asset


def _slot_setter(name: str) -> Callable[[Asset, Any], None]:
    setter: Callable[[Asset, Any], None] = getattr(Asset, name).__set__
    return setter


_new_object = object.__new__
_set_path = _slot_setter("path")
_set_name = _slot_setter("name")
_set_digest = _slot_setter("digest")
_set_size = _slot_setter("size")
_set_content_type = _slot_setter("content_type")
_set_integrity = _slot_setter("integrity")
_set_encodings = _slot_setter("encodings")


@dataclass(frozen=True, slots=True)
class Deployment:
    """An immutable, complete set of assets and its manifest.

    ``assets`` maps logical paths (``css/app.css``) to :class:`Asset`. ``extra`` carries
    data an integration records with the deployment (Vite's manifest, for one); it is
    part of the id.
    """

    id: str
    static_url: str
    assets: Mapping[str, Asset]
    created: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def url(self, path: str) -> str:
        """The hashed URL of the logical *path*; ``KeyError`` when it is not in the deployment."""
        return self.static_url + url_path(self.assets[path.lstrip("/")].name)

    @property
    def total_size(self) -> int:
        return sum(asset.size for asset in self.assets.values())

    def digests(self) -> set[str]:
        """The blobs this deployment uses."""
        return {asset.digest for asset in self.assets.values()}

    def _head(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "id": self.id,
            "static_url": self.static_url,
            "created": self.created,
            "extra": dict(self.extra),
        }

    def to_json(self) -> dict[str, Any]:
        assets = {path: self.assets[path].to_json() for path in sorted(self.assets)}
        return {**self._head(), "assets": assets}

    def dumps(self) -> bytes:
        # One line per asset: readable with `grep`. The lines are what
        # json.dumps(entry, sort_keys=True) gives, formatted directly: a build writes
        # thousands of them, and one encoder call per entry costs more than the rest of a
        # rebuild's work on them.
        head = json.dumps(self._head(), sort_keys=True, ensure_ascii=False)[:-1]
        text = _json_text
        assets = self.assets
        kinds: dict[str, str] = {}  # a handful of content types, thousands of assets
        lines = []
        for path in sorted(assets):
            asset = assets[path]
            encodings = asset.encodings
            codings = (
                ", ".join([f"{text(str(k))}: {int(encodings[k])}" for k in sorted(encodings)])
                if encodings
                else ""
            )
            kind = kinds.get(asset.content_type)
            if kind is None:
                kind = kinds[asset.content_type] = text(asset.content_type)
            lines.append(
                f" {text(path)}: {{"
                f'"content_type": {kind}, '
                f'"digest": {text(asset.digest)}, '
                f'"encodings": {{{codings}}}, '
                f'"integrity": {text(asset.integrity)}, '
                f'"name": {text(asset.name)}, '
                f'"size": {int(asset.size)}}}'
            )
        body = ",\n".join(lines)
        return f'{head}, "assets": {{\n{body}\n}}}}\n'.encode()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Deployment:
        if not isinstance(data, Mapping) or data.get("version") != MANIFEST_VERSION:
            raise ManifestError("Not a deploysync manifest (missing or unknown 'version')")
        try:
            ident = validate_id(str(data["id"]))
            assets_json = data["assets"]
            if not isinstance(assets_json, Mapping):
                raise TypeError("'assets' is not an object")
            assets = {str(p): Asset.from_json(str(p), a) for p, a in assets_json.items()}
            return cls(
                id=ident,
                static_url=str(data["static_url"]),
                assets=MappingProxyType(assets),
                created=float(data.get("created", 0.0)),
                extra=MappingProxyType(dict(data.get("extra") or {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ManifestError):
                raise
            raise ManifestError(f"Malformed manifest: {exc}") from None

    @classmethod
    def loads(cls, raw: bytes | str) -> Deployment:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ManifestError(f"Manifest is not valid JSON: {exc}") from None
        return cls.from_json(data)


def derive_id(
    static_url: str, assets: Iterable[Asset], extra: Mapping[str, Any] | None = None
) -> str:
    """The content-derived id of a deployment: 16 hex digits of a sha256 over its manifest.

    The creation time is left out, so building the same input twice (in any store) gives
    the same id.
    """
    rows = ((a.path, a.name, a.digest, a.content_type) for a in assets)
    return derive_id_of_rows(static_url, rows, extra)


def derive_id_of_rows(
    static_url: str,
    rows: Iterable[tuple[str, str, str, str]],
    extra: Mapping[str, Any] | None = None,
) -> str:
    """:func:`derive_id` from (path, name, digest, content type) rows, in any order."""
    lines = "".join(
        f"{path}\0{name}\0{digest}\0{kind}\n" for path, name, digest, kind in sorted(rows)
    )
    digest = hashlib.sha256(f"deploysync/{MANIFEST_VERSION}\n{static_url}\n{lines}".encode())
    if extra:
        digest.update(json.dumps(extra, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class DeploymentInfo:
    """What ``deploysync list`` shows of a deployment.

    ``error`` says why its manifest cannot be read; ``created``, ``files``, ``bytes`` and
    ``static_url`` (the prefix it was built for) are then unknown (``None``).
    """

    id: str
    created: float | None
    activated: float | None
    files: int | None
    bytes: int | None
    current: bool
    error: str | None = None
    static_url: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "created": self.created,
            "activated": self.activated,
            "files": self.files,
            "bytes": self.bytes,
            "current": self.current,
            "static_url": self.static_url,
        }
        if self.error is not None:
            data["error"] = self.error
        return data
