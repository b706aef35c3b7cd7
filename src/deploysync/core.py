"""Serving decisions, without I/O.

The adapters (``asgi.py``, ``wsgi.py``) turn a request into a :class:`Request` and call
:func:`decide` with the current :class:`Snapshot`; the answer is a :class:`Plan` (status,
headers, body made of bytes and file ranges) or ``None``, meaning "call the app". For the
app's response, :func:`edit_response` says which headers to set and whether the HTML body
goes through the injector. Nothing here reads a file, a clock or a socket.

Headers are lists of ``(name, value)`` byte pairs with lower-case names, the ASGI shape;
the WSGI adapter converts (latin-1, PEP 3333) at its edge.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

from .manifest import Deployment, is_valid_id

Header = tuple[bytes, bytes]
Headers = Sequence[Header]

STATIC_CACHE_CONTROL = b"public, max-age=31536000, immutable"
NO_STORE = b"no-store"
NO_CACHE = b"no-cache"
ALLOW = b"GET, HEAD"
CLIENT_PREFIX = "/_deploysync/"
VERSION_PATH = "/_deploysync/version"

# Limits on what a request header may carry before it is ignored (RFC 9110 §14.2 lets a
# server ignore a Range it does not want to honour; the others are ignored as garbage).
MAX_HEADER_VALUE = 8192
MAX_RANGES = 16
MAX_ACCEPT_ITEMS = 64

_EMPTY: Mapping[str, int] = MappingProxyType({})


# -- value objects ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileRange:
    """``length`` bytes of the file at ``path`` starting at ``offset``; ``whole`` when it
    is the complete file (so ``pathsend``/``wsgi.file_wrapper`` can send it as is)."""

    path: str
    offset: int
    length: int
    whole: bool = False


BodyPart = bytes | FileRange


@dataclass(frozen=True, slots=True)
class Plan:
    """A complete answer: status, headers and a body of bytes and file ranges."""

    status: int
    headers: tuple[Header, ...]
    body: tuple[BodyPart, ...] = ()

    @property
    def content_length(self) -> int:
        return sum(len(p) if isinstance(p, bytes) else p.length for p in self.body)


@dataclass(frozen=True, slots=True)
class Variant:
    """One stored representation of a file (identity, gzip or br), with its answers
    precomputed: a request for it in the common case is a dict lookup and a return."""

    encoding: str | None
    size: int
    etag: bytes
    data: bytes | None
    path: str | None
    headers: tuple[Header, ...]
    not_modified_headers: tuple[Header, ...]
    get: Plan
    head: Plan

    def part(self, offset: int, length: int) -> BodyPart:
        if self.data is not None:
            return self.data[offset : offset + length]
        assert self.path is not None  # a variant is in memory or on disk, never neither
        return FileRange(self.path, offset, length, offset == 0 and length == self.size)


@dataclass(frozen=True, slots=True)
class StaticFile:
    """A file servable under a URL, with its representations."""

    content_type: bytes
    identity: Variant
    gzip: Variant | None = None
    br: Variant | None = None
    vary: bool = False


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a request needs, loaded once and swapped as a whole.

    ``files`` maps names below the static prefix (``css/app.3f9a2c1b7d4e.css``) of every
    retained deployment; ``routes`` maps app-relative paths of the runtime's own files
    (the client script). ``urls`` maps the current deployment's logical paths to URLs.
    """

    current_id: str | None
    seq: int | None
    order: Mapping[str, int]
    files: Mapping[str, StaticFile]
    urls: Mapping[str, str]
    routes: Mapping[str, StaticFile]
    static_url: str
    version: Plan
    version_head: Plan
    script_path: str = ""
    id_header: tuple[Header, ...] = ()
    deployment: Deployment | None = None
    loaded: tuple[str, ...] = field(default=())
    # The store could not be read lately (Redis unreachable): ids activated since are
    # unknown here, so an unknown page id may be newer than what this server knows.
    behind: bool = False


# Not frozen: a request is built on every call, and a frozen dataclass's __init__ costs
# several times more; nothing mutates it after make_request.
@dataclass(slots=True)
class Request:
    """The parts of a request the decisions read.

    ``path`` is the server-decoded path relative to the application root (``root_path``
    / ``SCRIPT_NAME`` removed); ``raw_path`` is the still-encoded one when the server
    provides it, used only to refuse encoded separators. ``page_id`` is the page's valid
    ``X-Deployment-Id``; only with ``navigate`` can it lead to a 409.
    """

    method: str
    path: str
    raw_path: bytes | None = None
    accept_encoding: bytes | None = None
    range: bytes | None = None
    if_range: bytes | None = None
    if_none_match: bytes | None = None
    navigate: bool = False
    page_id: str | None = None
    # Sec-Fetch-Dest (a page load: document, iframe), looked at only with validators,
    # and whether the request sent If-Modified-Since.
    fetch_dest: bytes | None = None
    if_modified_since: bool = False
    if_match: bytes | None = None

    @property
    def document(self) -> bool:
        """A page load (``Sec-Fetch-Dest: document``, ``iframe``)."""
        dest = self.fetch_dest
        return dest is not None and dest.strip().lower() in _DOCUMENT_DESTS


_WANTED = {
    b"accept-encoding",
    b"range",
    b"if-range",
    b"if-match",
    b"if-none-match",
    b"if-modified-since",
    b"sec-fetch-dest",
    b"x-deploysync",
    b"x-deployment-id",
}
_DOCUMENT_DESTS = (b"document", b"iframe", b"frame")


# The CGI-style environ keys (PEP 3333, Django's ``request.META``) of the headers above.
ENVIRON_HEADERS = tuple(
    (f"HTTP_{name.decode().upper().replace('-', '_')}", name) for name in sorted(_WANTED)
)


def environ_headers(environ: Mapping[str, Any]) -> list[tuple[bytes, bytes]]:
    """The headers the core reads, from a WSGI environ or Django's ``request.META``."""
    return [
        (name, str(value).encode("latin-1", "replace"))
        for key, name in ENVIRON_HEADERS
        if (value := environ.get(key)) is not None
    ]


def make_request(
    method: str,
    path: str,
    headers: Sequence[tuple[bytes, bytes]],
    raw_path: bytes | None = None,
) -> Request:
    """Normalise a request from a lower-case ``(name, value)`` byte-pair list.

    Repeated headers are combined with ``", "`` (RFC 9110 §5.3) except the deployment
    id, which is single-valued: two of them count as none.
    """
    if not headers:
        return Request(method, path, raw_path)
    found: dict[bytes, bytes] | None = None
    ids = 0
    for name, value in headers:
        if name in _WANTED:
            if found is None:
                found = {}
            if name == b"x-deployment-id":
                ids += 1
            if name not in found:
                found[name] = value
            elif len(found[name]) <= MAX_HEADER_VALUE:
                # Past the limit the value is ignored anyway: joining thousands of
                # repeated headers would cost quadratic time.
                found[name] += b", " + value
    if found is None:
        # The common case (no conditional, range, coding or navigation header).
        return Request(method, path, raw_path)
    navigate = found.get(b"x-deploysync", b"").strip().lower() == b"navigate"
    page_id = None
    if ids == 1:
        try:
            candidate = found[b"x-deployment-id"].strip().decode("ascii")
        except UnicodeDecodeError:
            candidate = ""
        # An invalid id counts as absent and is never echoed (PROTOCOL.md).
        page_id = candidate if is_valid_id(candidate) else None
    get = found.get
    return Request(
        method,
        path,
        raw_path,
        get(b"accept-encoding"),
        get(b"range"),
        get(b"if-range"),
        get(b"if-none-match"),
        navigate,
        page_id,
        get(b"sec-fetch-dest"),
        b"if-modified-since" in found,
        get(b"if-match"),
    )


# -- ordering and stale navigation ----------------------------------------------------------


def is_outdated(
    page_id: str, current_id: str, order: Mapping[str, int], *, behind: bool = False
) -> bool:
    """Whether a page rendered against *page_id* must move to *current_id*.

    *order* maps ids to the seq of their latest activation (``Store.order()``); higher is
    newer, so a rollback (re-activating an older id) gives it the highest seq. *behind*:
    this server cannot read the store now, so an id it does not know may be one
    activated since (never send a page back to an older frontend).
    """
    if page_id == current_id:
        return False
    page, cur = order.get(page_id), order.get(current_id)
    if page is None:
        return not behind  # never activated, pruned or unknown: move it to current
    if cur is None:
        return True  # this server is pinned to a not-yet-activated (newer) deployment
    return page < cur  # a newer page never goes back to an older frontend


def reload_plan(current_id: str) -> Plan:
    """The contract's answer to a stale navigation: 409, empty, not stored anywhere."""
    return Plan(
        409,
        (
            (b"x-deploysync", b"reload"),
            (b"x-deployment-id", current_id.encode()),
            (b"cache-control", NO_STORE),
            (b"content-length", b"0"),
        ),
    )


# -- small fixed answers ----------------------------------------------------------------------

NOT_FOUND = Plan(
    404,
    (
        # A CDN must never keep a 404 that a rollout makes true later (PROTOCOL.md).
        (b"cache-control", NO_STORE),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"x-content-type-options", b"nosniff"),
        (b"content-length", b"9"),
    ),
    (b"Not Found",),
)
NOT_FOUND_HEAD = Plan(404, NOT_FOUND.headers)
PRECONDITION_FAILED = Plan(
    412,
    ((b"cache-control", NO_STORE), (b"content-length", b"0")),
)
METHOD_NOT_ALLOWED = Plan(
    405,
    (
        (b"allow", ALLOW),
        (b"cache-control", NO_STORE),
        (b"content-length", b"0"),
    ),
)


def version_plans(
    current_id: str | None, static_url: str, seq: int | None, outdated: bool | None = None
) -> tuple[Plan, Plan]:
    """The GET and HEAD answers of ``/_deploysync/version``.

    *outdated*: asked with a page's id (``X-Deployment-Id``), whether that page must move
    to this server's deployment (:func:`is_outdated`): a straggler's older id does not
    make a newer page stale.
    """
    fields: dict[str, Any] = {"id": current_id, "static_url": static_url, "seq": seq}
    if outdated is not None:
        fields["outdated"] = outdated
    body = json.dumps(fields).encode()
    headers = (
        (b"content-type", b"application/json"),
        (b"cache-control", NO_STORE),
        (b"x-content-type-options", b"nosniff"),
        (b"content-length", str(len(body)).encode()),
    )
    return Plan(200, headers, (body,)), Plan(200, headers)


def version_for_page(snapshot: Snapshot, page_id: str, method: str) -> Plan:
    """The version answer for a page that sent its id."""
    current = snapshot.current_id
    outdated = current is not None and is_outdated(
        page_id, current, snapshot.order, behind=snapshot.behind
    )
    get, head = version_plans(current, snapshot.static_url, snapshot.seq, outdated)
    return get if method == "GET" else head


def make_variant(
    encoding: str | None,
    *,
    etag: bytes,
    content_type: bytes,
    size: int,
    data: bytes | None,
    path: str | None,
    vary: bool,
    cache_control: bytes = STATIC_CACHE_CONTROL,
) -> Variant:
    """A representation with its 200, HEAD and 304 answers precomputed."""
    common: list[Header] = [
        (b"cache-control", cache_control),
        (b"etag", etag),
    ]
    if vary:
        common.append((b"vary", b"Accept-Encoding"))
    # RFC 9110 §15.4.5: a 304 carries the validators and caching headers a 200 would.
    not_modified = tuple(common)
    headers = [
        *common,
        (b"content-type", content_type),
        (b"accept-ranges", b"bytes"),
        (b"x-content-type-options", b"nosniff"),
        # Public files: a page of another origin may read them (a CDN's URL, a module
        # script or a font, fetched in CORS mode), as whitenoise allows by default.
        (b"access-control-allow-origin", b"*"),
    ]
    if encoding:
        headers.append((b"content-encoding", encoding.encode()))
    headers.append((b"content-length", str(size).encode()))
    full = tuple(headers)
    if data is not None:
        body: tuple[BodyPart, ...] = (data,)
    else:
        assert path is not None
        body = (FileRange(path, 0, size, True),)
    return Variant(
        encoding=encoding,
        size=size,
        etag=etag,
        data=data,
        path=path,
        headers=full,
        not_modified_headers=not_modified,
        get=Plan(200, full, body),
        head=Plan(200, full),
    )


# -- header parsing (RFC 9110) ------------------------------------------------------------------

_ETAG_RE = re.compile(rb'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|$)')


def _opaque(etag: bytes) -> bytes:
    return etag[2:] if etag.startswith(b"W/") else etag


def if_none_match_hits(value: bytes, etag: bytes) -> bool:
    """RFC 9110 §13.1.2: ``*`` or a list of entity tags, compared weakly.

    A malformed list is read as far as it parses; what follows is ignored, so garbage
    never matches anything (and the full response is sent).
    """
    if len(value) > MAX_HEADER_VALUE:
        return False
    if value.strip() == b"*":
        return True
    target = _opaque(etag)
    return any(tag == target for _, tag in _listed_tags(value))


def _listed_tags(value: bytes) -> Iterator[tuple[bool, bytes]]:
    """The entity tags of an ``If-None-Match``/``If-Match`` list, ``(weak, "opaque")``,
    as far as it parses."""
    pos, end = 0, len(value)
    while pos < end:
        match = _ETAG_RE.match(value, pos)
        if match is None:
            return
        yield bool(match.group(1)), b'"' + match.group(2) + b'"'
        pos = match.end()


# The entity tag of an injected document names the deployment it was injected for: the
# app's own tag describes the page without the tags, and the same page must not be
# revalidated as unchanged after a deploy (a 304 would keep the old id in the browser).
_DOCUMENT_TAG = b".ds-"
_DOCUMENT_TAG_RE = re.compile(rb"\.ds-([A-Za-z0-9_-]{1,64})\Z")


def document_etag(etag: bytes, current_id: str) -> bytes:
    """The app's *etag* of an HTML page, for the page as injected for *current_id*."""
    etag = etag.strip()
    if len(etag) < 2 or not etag.endswith(b'"'):
        return etag  # not an entity tag: left as the app wrote it
    return etag[:-1] + _DOCUMENT_TAG + current_id.encode() + b'"'


@dataclass(slots=True)
class Conditional:
    """The conditional headers of a request for the app, with the document tags resolved.

    ``if_none_match``: the value the app sees (``None``: remove the header); ``current``:
    a tag of the current deployment's page was given back its app form (a 304 then gets
    the document tag again); ``stale``: a tag of another deployment's page was removed,
    and ``If-Modified-Since`` must go too, or the app could answer 304 by date.
    ``if_match``: the ``If-Match`` the app sees when it named the current page's tag
    (given back its app form); ``None``: unchanged.
    """

    if_none_match: bytes | None
    current: bool
    stale: bool
    if_match: bytes | None = None


def app_conditional(value: bytes, current_id: str | None) -> Conditional | None:
    """How ``If-None-Match: value`` reaches the app; ``None``: unchanged (the common case)."""
    if _DOCUMENT_TAG not in value or len(value) > MAX_HEADER_VALUE:
        return None
    kept: list[bytes] = []
    current = stale = False
    pos, end = 0, len(value)
    while pos < end:
        match = _ETAG_RE.match(value, pos)
        if match is None:
            return None  # malformed: the app judges it as it is
        weak, opaque = match.group(1) or b"", match.group(2)
        pos = match.end()
        found = _DOCUMENT_TAG_RE.search(opaque)
        if found is None:
            kept.append(weak + b'"' + opaque + b'"')
        elif found.group(1).decode() == current_id:
            kept.append(weak + b'"' + opaque[: found.start()] + b'"')
            current = True
        else:
            stale = True
    return Conditional(b", ".join(kept) or None, current, stale)


def request_conditional(request: Request, current_id: str | None) -> Conditional | None:
    """How the request's validators reach the app; ``None``: unchanged (the common case).

    :func:`app_conditional` for ``If-None-Match``; and a page load whose validators name
    no deployment at all (an ETag or a date of a page cached before it carried the tags:
    before deploysync was added) reaches the app without them, so the app sends the page
    instead of a 304 that would keep the old one, without the client, in the browser.
    """
    if current_id is None:
        return None
    conditional = None
    page_load = request.document or request.navigate
    if request.if_none_match is not None:
        conditional = app_conditional(request.if_none_match, current_id)
        if conditional is None and page_load:
            conditional = Conditional(None, False, True)
    elif request.if_modified_since and page_load:
        conditional = Conditional(None, False, True)
    if request.if_match is not None and _DOCUMENT_TAG in request.if_match:
        # The tag a client holds is the page's (a PUT to it, say): the app knows its own.
        if_match = app_conditional(request.if_match, current_id)
        if if_match is not None and if_match.current and not if_match.stale:
            if conditional is None:
                conditional = Conditional(request.if_none_match, False, False)
            conditional.if_match = if_match.if_none_match
    return conditional


def conditional_headers(headers: Iterable[Header], conditional: Conditional) -> list[Header]:
    """The request's *headers* (ASGI form) with the conditional ones as the app must see them."""
    stale = conditional.stale
    if_match = conditional.if_match
    out = [
        (name, value)
        for name, value in headers
        if name != b"if-none-match"
        and not (stale and name == b"if-modified-since")
        and not (if_match is not None and name == b"if-match")
    ]
    if conditional.if_none_match is not None:
        out.append((b"if-none-match", conditional.if_none_match))
    if if_match is not None:
        out.append((b"if-match", if_match))
    return out


def conditional_environ(environ: MutableMapping[str, Any], conditional: Conditional) -> None:
    """The same edit on a WSGI environ (or Django's ``request.META``), in place."""
    if conditional.if_none_match is None:
        environ.pop("HTTP_IF_NONE_MATCH", None)
    else:
        environ["HTTP_IF_NONE_MATCH"] = conditional.if_none_match.decode("latin-1")
    if conditional.stale:
        environ.pop("HTTP_IF_MODIFIED_SINCE", None)
    if conditional.if_match is not None:
        environ["HTTP_IF_MATCH"] = conditional.if_match.decode("latin-1")


def if_match_hits(value: bytes, etag: bytes) -> bool:
    """RFC 9110 §13.1.1: ``*`` or a list of entity tags, compared strongly (a weak tag
    never matches). A malformed list matches nothing: the request is refused (412)."""
    if len(value) > MAX_HEADER_VALUE:
        return False
    if value.strip() == b"*":
        return True
    if etag.startswith(b"W/"):
        return False
    return any(not weak and tag == etag for weak, tag in _listed_tags(value))


def if_range_allows(value: bytes, etag: bytes) -> bool:
    """RFC 9110 §13.1.5: a Range is honoured only if the validator matches *strongly*.

    A date never matches, since no ``Last-Modified`` is sent; a weak tag never matches.
    """
    return value.strip() == etag and not etag.startswith(b"W/")


_RANGE_SPEC_RE = re.compile(rb"\s*(\d{0,19})\s*-\s*(\d{0,19})\s*")


def parse_range(value: bytes, size: int) -> list[tuple[int, int]] | None:
    """RFC 9110 §14.1.2: the satisfiable ``(start, end_inclusive)`` ranges of *value*.

    ``None``: the header is malformed, oversized or in another unit, and is ignored
    (§14.2: the server then sends 200). ``[]``: valid but unsatisfiable (416).
    Overlapping ranges are coalesced, as §14.2 allows; otherwise they keep the order
    they were asked in (§15.3.7.2). A zero-length representation honours no range: its
    one satisfiable form (a suffix) is ignored (200), any other is a 416.
    """
    if len(value) > MAX_HEADER_VALUE:
        return None
    unit, eq, spec = value.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes":
        return None
    items = spec.split(b",")
    if len(items) > MAX_RANGES:
        return None
    ranges: list[tuple[int, int]] = []
    seen = 0
    for item in items:
        if not item.strip():
            continue  # RFC 9110 §5.6.1: empty list elements are ignored
        match = _RANGE_SPEC_RE.fullmatch(item)
        if match is None:
            return None
        first, last = match.group(1), match.group(2)
        seen += 1
        if first:
            start = int(first)
            if last:
                stop = int(last)
                if stop < start:
                    return None  # §14.1.1: an invalid range-spec invalidates the header
                stop = min(stop, size - 1)
            else:
                stop = size - 1
            if start < size:
                ranges.append((start, stop))
        elif last:
            suffix = int(last)
            if suffix > 0:
                if size == 0:
                    return None
                ranges.append((max(0, size - suffix), size - 1))
        else:
            return None
    if not seen:
        return None
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(ranges):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    if len(merged) == len(ranges):
        return ranges  # nothing coalesced: the order asked
    return merged


_CODING_RE = re.compile(rb"\s*([A-Za-z0-9!#$%&'*+.^_`|~-]+)\s*((?:;[^,]*)?)")
_HAS_Q_RE = re.compile(rb";\s*q\s*=", re.I)
_QVALUE_RE = re.compile(rb";\s*q\s*=\s*(0(?:\.\d{0,3})?|1(?:\.0{0,3})?)\s*(?:;|$)", re.I)


def parse_accept_encoding(value: bytes) -> dict[bytes, float] | None:
    """RFC 9110 §12.5.3: coding -> qvalue. ``None`` when the header is unusable."""
    if len(value) > MAX_HEADER_VALUE:
        return None
    result: dict[bytes, float] = {}
    items = value.split(b",")
    if len(items) > MAX_ACCEPT_ITEMS:
        return None
    for item in items:
        if not item.strip():
            continue
        match = _CODING_RE.fullmatch(item)
        if match is None:
            continue  # an unparsable element is skipped, the rest still counts
        coding, params = match.group(1).lower(), match.group(2)
        q = 1.0
        if _HAS_Q_RE.search(params):
            qmatch = _QVALUE_RE.search(params)
            if qmatch is None:
                continue  # an invalid qvalue (§12.4.2): the element is skipped
            q = float(qmatch.group(1))
        if coding == b"x-gzip":
            coding = b"gzip"  # §8.4.1.3: x-gzip is gzip
        result.setdefault(coding, q)
    return result


def choose_variant(file: StaticFile, accept_encoding: bytes | None) -> Variant:
    """The representation to send: highest qvalue among those stored, ties going to
    the smaller of br and gzip (br when equal), then identity. Without Accept-Encoding,
    identity (§12.5.3: "no preference", and the safest for old clients)."""
    if accept_encoding is None or (file.br is None and file.gzip is None):
        return file.identity
    prefs = parse_accept_encoding(accept_encoding)
    if not prefs:
        # An empty field means "no coding" (§12.5.3); an unusable one is ignored.
        return file.identity
    star = prefs.get(b"*")
    best: Variant | None = None
    best_q = 0.0
    for variant, name in ((file.br, b"br"), (file.gzip, b"gzip")):
        if variant is None:
            continue
        q = prefs.get(name, star if star is not None else 0.0)
        # A low brotli quality can make br larger than gzip.
        if q > best_q or (q == best_q and best is not None and variant.size < best.size):
            best, best_q = variant, q
    # Identity not listed is acceptable (§12.5.3) but ranks below any accepted coding.
    identity_q = prefs.get(b"identity", star if star is not None else 0.0)
    if best is not None and best_q >= identity_q:
        return best
    if identity_q > 0 or best is None:
        # When nothing is acceptable (`identity;q=0` and no stored coding allowed),
        # §12.5.3 permits ignoring the field rather than failing: identity is sent.
        return file.identity
    return best


# -- static files -------------------------------------------------------------------------------

_ENCODED_SEPARATORS = re.compile(rb"%(?:2f|5c|00)", re.I)


def serve_file(file: StaticFile, request: Request, boundary: str | None = None) -> Plan:
    """GET/HEAD of a known file: 412, 304, 200, 206 or 416 per RFC 9110 §13 and §14."""
    head = request.method == "HEAD"
    variant = choose_variant(file, request.accept_encoding)
    # First the representation the answer is about, which the preconditions are then
    # evaluated against (§13.2.2): a Range that will be honoured selects the identity
    # one, so that offsets mean the same thing to every client whatever it accepts
    # (§14.1.2); any other answer is the negotiated one. §14.2: a HEAD ignores Range.
    ranges = None
    if request.range is not None and not head:
        identity = file.identity
        if request.if_range is None or if_range_allows(request.if_range, identity.etag):
            ranges = parse_range(request.range, identity.size)
            if ranges is not None:
                variant = identity
    if request.if_match is not None and not if_match_hits(request.if_match, variant.etag):
        return PRECONDITION_FAILED  # §13.1.1
    inm = request.if_none_match
    if inm is not None and if_none_match_hits(inm, variant.etag):
        return Plan(304, variant.not_modified_headers)
    if ranges is None:
        return variant.head if head else variant.get
    size = variant.size
    if not ranges:
        return Plan(
            416,
            (
                (b"content-range", f"bytes */{size}".encode()),
                (b"cache-control", NO_STORE),
                (b"content-length", b"0"),
            ),
        )
    base = [h for h in variant.headers if h[0] not in (b"content-length", b"content-type")]
    if len(ranges) == 1:
        start, stop = ranges[0]
        length = stop - start + 1
        headers = (
            *base,
            (b"content-type", file.content_type),
            (b"content-range", f"bytes {start}-{stop}/{size}".encode()),
            (b"content-length", str(length).encode()),
        )
        return Plan(206, headers, (variant.part(start, length),))
    # §14.6 multipart/byteranges: each part carries its Content-Type and Content-Range.
    mark = (boundary or secrets.token_hex(12)).encode()
    parts: list[BodyPart] = []
    for index, (start, stop) in enumerate(ranges):
        head_bytes = (
            (b"\r\n" if index else b"")
            + b"--"
            + mark
            + b"\r\ncontent-type: "
            + file.content_type
            + f"\r\ncontent-range: bytes {start}-{stop}/{size}\r\n\r\n".encode()
        )
        parts.append(head_bytes)
        parts.append(variant.part(start, stop - start + 1))
    parts.append(b"\r\n--" + mark + b"--\r\n")
    total = sum(len(p) if isinstance(p, bytes) else p.length for p in parts)
    headers = (
        *base,
        (b"content-type", b"multipart/byteranges; boundary=" + mark),
        (b"content-length", str(total).encode()),
    )
    return Plan(206, headers, tuple(parts))


def decide(
    request: Request,
    snapshot: Snapshot,
    static_path: str,
    boundary: str | None = None,
) -> Plan | None:
    """The answer to *request*, or ``None`` when the app must be called.

    *static_path* is the path part of the static prefix (``/static/``).
    """
    current = snapshot.current_id
    page = request.page_id
    if (
        request.navigate
        and current is not None
        and page is not None
        and is_outdated(page, current, snapshot.order, behind=snapshot.behind)
    ):
        # The app is not called: a POST is not processed, so the client can submit it
        # again natively on the new frontend. Plain API fetches (no navigate marker)
        # are never answered 409.
        return reload_plan(current)
    path = request.path
    if path.startswith(static_path):
        file = snapshot.files.get(path[len(static_path) :])
    elif path.startswith(CLIENT_PREFIX):
        if path == VERSION_PATH:
            if request.method == "GET":
                return snapshot.version if page is None else version_for_page(snapshot, page, "GET")
            if request.method == "HEAD":
                if page is None:
                    return snapshot.version_head
                return version_for_page(snapshot, page, "HEAD")
            return METHOD_NOT_ALLOWED
        file = snapshot.routes.get(path)
    else:
        return None
    method = request.method
    if method != "GET" and method != "HEAD":
        return METHOD_NOT_ALLOWED
    # An encoded "/", "\" or NUL is refused even when its decoded form names a file: the
    # request did not name that file, it smuggled a separator. (An encoded "%" is a name
    # with "%" in it: names are looked up, never decoded twice or joined to a path.)
    raw = request.raw_path
    if file is None or (raw is not None and b"%" in raw and _ENCODED_SEPARATORS.search(raw)):
        return NOT_FOUND_HEAD if method == "HEAD" else NOT_FOUND
    if (
        request.accept_encoding is None
        and request.range is None
        and request.if_none_match is None
        and request.if_match is None
    ):
        variant = file.identity
        return variant.head if method == "HEAD" else variant.get
    return serve_file(file, request, boundary)


# -- the app's responses --------------------------------------------------------------------------


@dataclass(slots=True)
class ResponseEdit:
    """What to do with an app's response.

    ``headers`` replace the app's; when ``inject`` is true the body goes through the
    injector and ``content_length`` (the app's, if any) is adjusted once it has decided.
    """

    headers: list[Header]
    inject: bool
    content_length: int | None = None
    # A HEAD answer: its length is known only if the app sent the page's body anyway.
    head: bool = False
    # A page the app sent compressed (its Content-Encoding): the tags cannot go in.
    compressed: bytes = b""


def edit_response(
    method: str,
    status: int,
    headers: Iterable[tuple[bytes, bytes]],
    current_id: str | None,
    id_header: tuple[Header, ...] = (),
    conditional: Conditional | None = None,
    navigation: bytes | None = None,
) -> ResponseEdit | None:
    """Decide how an app's response is changed; ``None``: it passes through untouched.

    HTML documents (not downloads: ``Content-Disposition: attachment``) get
    ``X-Deployment-Id``, ``Cache-Control: no-cache`` when the app set
    none, and (for a body that can be rewritten) the injection. Their ``ETag`` names the
    deployment too (:func:`document_etag`); without one, ``Last-Modified`` is dropped, as
    a date cannot tell one deployment's page from another's. A response carrying
    ``X-Deploysync: off`` opts out: the header is removed and nothing else changes.
    *conditional* is what :func:`app_conditional` made of the request. *headers* may
    have names in any case. A page the app compressed comes back with its coding in
    ``compressed`` (no tags can go in; the adapters say so once).

    *navigation*: the origin (:func:`own_router_origin`) of a fetch of the client's
    router. A redirect of such a request to another origin has its ``Location`` renamed
    ``X-Deploysync-Location`` (and is not to be cached): a fetch cannot follow it (CORS),
    and a POST the app processed must not be sent again, so the client loads it instead.
    An attachment gets ``X-Deploysync-Download``, its file name (percent-encoded UTF-8):
    the router saves it under that name.
    """
    content_type = b""
    opt_out = has_cache_control = download = False
    disposition = b""
    encoded = b""
    content_length: int | None = None
    etag_at = modified_at = ranges_at = -1
    out: list[Header] = []
    own_id: list[Header] = []  # the app's own X-Deployment-Id
    for name, value in headers:
        lname = name.lower()
        if lname == b"content-type":
            content_type = value
        elif lname == b"x-deploysync":
            if value.strip().lower() == b"off":
                opt_out = True
                continue
        elif lname == b"cache-control":
            has_cache_control = True
        elif lname == b"content-encoding":
            coding = value.strip().lower()
            encoded = b"" if coding == b"identity" else coding
        elif lname == b"content-length":
            try:
                content_length = int(value)
            except ValueError:
                content_length = None
            continue  # re-added below, exact
        elif lname == b"x-deployment-id":
            own_id.append((name, value))
            continue  # the middleware's own header wins (unless the app opts out)
        elif lname == b"etag":
            etag_at = len(out)
        elif lname == b"last-modified":
            modified_at = len(out)
        elif lname == b"accept-ranges":
            ranges_at = len(out)
        elif lname == b"content-disposition":
            # A download (an HTML export) is a file, not a page of the site (RFC 6266).
            download = value.lstrip()[:10].lower() == b"attachment"
            disposition = value
        out.append((name, value))
    if opt_out:
        return ResponseEdit(_with_length(out + own_id, content_length), False)
    if 300 <= status < 400 or download:
        edit = _router_edit(status, out, content_length, download, disposition, navigation)
        if edit is not None:
            return edit
    if current_id is None or status < 200:
        return None
    restored = conditional is not None and conditional.current
    # text/html, with or without parameters, any case (RFC 9110 §8.3.1).
    mime = content_type[:10].lower()
    if download or not (mime == b"text/html" or (mime[:9] == b"text/html" and mime[9:] in b"; \t")):
        if status == 304 and restored and etag_at >= 0:
            # The page the browser holds is still current: its tag keeps the suffix.
            name, value = out[etag_at]
            out[etag_at] = (name, document_etag(value, current_id))
            return ResponseEdit(_with_length(out, content_length), False)
        return None
    if not has_cache_control:
        # The document must be revalidated so a deploy is seen at the next load;
        # assets stay immutable.
        out.append((b"cache-control", NO_CACHE))
    out.extend(id_header or ((b"x-deployment-id", current_id.encode()),))
    # A part of the app's bytes (206) or a body the app compressed is left as it is.
    whole = status != 206 and not encoded
    inject = whole and status not in (204, 304)
    if whole and (status != 304 or restored):
        # What the browser keeps is the page with this deployment's tags in it.
        if etag_at >= 0:
            name, value = out[etag_at]
            out[etag_at] = (name, document_etag(value, current_id))
        # Ranges would be of the app's bytes, not of the page sent.
        dropped = {ranges_at if status != 304 else -1, modified_at if etag_at < 0 else -1}
        dropped.discard(-1)
        if dropped:
            out = [header for index, header in enumerate(out) if index not in dropped]
    if inject and method == "HEAD":
        # The length of the injected page is known only from its body, which a HEAD
        # answer may not carry: the app's, grown by the tags when its body (sent anyway,
        # as Starlette does) took them; else none (RFC 9110 §9.3.2 lets HEAD omit it).
        # The server drops that body.
        return ResponseEdit(out, True, content_length, head=True)
    if inject:
        return ResponseEdit(out, True, content_length)
    edit = ResponseEdit(_with_length(out, content_length), False)
    if encoded and status == 200 and method != "HEAD":
        edit.compressed = encoded
    return edit


# A reference that stays on the request's origin: a path from the root ("/a", not "//a"
# or "/\\a", which browsers read as another host), or one without scheme or leading slash.
_SAME_ORIGIN_REFERENCE_RE = re.compile(rb"/(?![/\\])|(?![a-zA-Z][a-zA-Z0-9+.-]*:)[^/\\]")
_SCHEME_RE = re.compile(rb"[a-zA-Z][a-zA-Z0-9+.-]*:")
_URL_SPACE = bytes(range(0x21))  # stripped from the ends of a URL, as browsers do
_NEVER_LOADED = (b"javascript:", b"data:", b"vbscript:")


def origin_of(
    scheme: str, host: bytes | str | None, server: tuple[str, int | str] | None = None
) -> bytes | None:
    """``scheme://host`` of a request (lower case, without the scheme's default port),
    for :func:`edit_response`: from its ``Host``, else from the server's name and port."""
    if not host and server:
        name, port = server
        host = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
    if not host:
        return None
    raw = (host.encode("latin-1", "replace") if isinstance(host, str) else host).strip()
    origin = (scheme.encode("latin-1", "replace") + b"://" + raw).lower()
    default = b":443" if scheme == "https" else b":80"
    return origin.removesuffix(default)


def own_router_origin(
    scheme: str,
    host: bytes | str | None,
    server: tuple[str, int | str] | None,
    router: bool,
) -> bytes | None:
    """:func:`origin_of` a fetch of the client's own router (``X-Deploysync-Router``),
    ``None`` for other requests: htmx and Turbo send the navigate header too, and follow
    redirects and save downloads their own way."""
    return origin_of(scheme, host, server) if router else None


def environ_origin(environ: Mapping[str, Any], host: str | None = None) -> bytes | None:
    """:func:`own_router_origin` of a WSGI environ (or Django's ``request.META``, with
    the *host* Django reads)."""
    name = environ.get("SERVER_NAME")
    return own_router_origin(
        environ.get("wsgi.url_scheme", "http"),
        host or environ.get("HTTP_HOST"),
        (name, environ.get("SERVER_PORT", "")) if name else None,
        "HTTP_X_DEPLOYSYNC_ROUTER" in environ,
    )


def attachment_name(disposition: bytes) -> str | None:
    """The file name a ``Content-Disposition`` gives an attachment (``filename*`` first,
    RFC 6266), ``""`` when it gives none; ``None`` when it is no attachment."""
    from email.message import Message
    from email.utils import collapse_rfc2231_value

    message = Message()
    try:
        # Browsers read the bytes of a plain filename="..." as UTF-8 when they are.
        try:
            text = disposition.decode("utf-8")
        except UnicodeDecodeError:
            text = disposition.decode("latin-1")
        message["content-disposition"] = text
        if message.get_content_disposition() != "attachment":
            return None
        params = message.get_params([], header="content-disposition")
        names = [value for key, value in params if key == "filename"]
        extended = [value for value in names if isinstance(value, tuple)]  # filename*
        return str(collapse_rfc2231_value((extended or names or [""])[0]))
    except (ValueError, LookupError):  # a malformed value, an unknown charset
        return ""


def _clean_url(value: bytes) -> bytes:
    """A URL as browsers read it: no tab or line break, no space or control at its ends."""
    return value.translate(None, b"\t\n\r").strip(_URL_SPACE)


def leads_elsewhere(location: bytes, origin: bytes) -> bool:
    """Whether a redirect to *location* leaves *origin* (``scheme://host``): another
    host, scheme or port, or another kind of URL (``mailto:``, an app's own scheme),
    which a fetch cannot follow either. In doubt it does (a reference a browser might
    resolve to another host). A ``javascript:`` or ``data:`` URL does not count: no
    browser follows a redirect there, and the client must never load one."""
    value = _clean_url(location)
    if not value or _SAME_ORIGIN_REFERENCE_RE.match(value):
        return False
    end = len(origin)
    if value[:end].lower() == origin and value[end : end + 1] in (b"", b"/", b"?", b"#"):
        return False
    scheme = _SCHEME_RE.match(value)
    return scheme is None or scheme.group().lower() not in _NEVER_LOADED


# What the client's router is told that other requests are not: they vary on its marker.
_VARY_ROUTER = (b"vary", b"X-Deploysync-Router")


def _router_edit(
    status: int,
    out: list[Header],
    content_length: int | None,
    download: bool,
    disposition: bytes,
    navigation: bytes | None,
) -> ResponseEdit | None:
    """A redirect or an attachment, as the client's router is to get it (*navigation*:
    its fetch's origin, see :func:`edit_response`) and as every other request is:
    either answer varies on the router's marker, so that no cache hands one to the other
    (a cached plain redirect to another origin would fail the router's fetch, which would
    then submit a POST again; a cached attachment would be shown as a page)."""
    if download:
        if navigation is not None:
            # The router saves the file the browser would have saved, under its name.
            saved_as = attachment_name(disposition) or ""
            out.append((b"x-deploysync-download", quote(saved_as, safe="").encode()))
        out.append(_VARY_ROUTER)
        return ResponseEdit(_with_length(out, content_length), False)
    location = next((v for n, v in out if n.lower() == b"location"), None)
    if location is None or _SAME_ORIGIN_REFERENCE_RE.match(_clean_url(location)):
        return None  # a path on this site: fetch follows it as the browser does
    if navigation is not None and leads_elsewhere(location, navigation):
        # Not a redirect any more: no cache may keep it (a 301 is fresh for good).
        kept = [(n, v) for n, v in out if n.lower() not in (b"location", b"cache-control")]
        kept += [(b"x-deploysync-location", location), (b"cache-control", NO_STORE)]
        out = kept
    out.append(_VARY_ROUTER)
    return ResponseEdit(_with_length(out, content_length), False)


def _with_length(headers: list[Header], length: int | None) -> list[Header]:
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return headers


def finish_headers(edit: ResponseEdit, added: int) -> list[Header]:
    """The headers to send once the injector decided it added *added* bytes."""
    headers = edit.headers
    if edit.content_length is not None and (added or not edit.head):
        headers.append((b"content-length", b"%d" % (edit.content_length + added)))
    return headers
