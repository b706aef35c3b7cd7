"""Streaming HTML injection of the deployment id and the browser client.

:class:`Injector` is a small incremental state machine: it is fed the body chunk by chunk
and returns what may be sent so far. It looks only at the start of the document (a
bounded lookahead, :data:`LOOKAHEAD` bytes), never buffers a whole body, and once it has
decided it passes every later chunk through unchanged.

Where the tags go:

* right after ``<head ...>`` (any case, with attributes, after a BOM, doctype, comments,
  processing instructions and whitespace, and after ``<html ...>``);
* without ``<head>``, before the first other tag (``<body>``, ``<title>``, ...) of a
  *document* (one that opened with a doctype, ``<html>`` or ``<body>``); a fragment such as
  an htmx partial (``<div>...``) is left alone, it is not a page;
* nowhere when the head already carries ``<meta name="deployment-id" ...>`` (placed by a
  template helper, :func:`head_tags`), or when nothing decides within the lookahead.
"""

from __future__ import annotations

import html
import re
import sys

LOOKAHEAD = 64 * 1024
ROUTING_MODES = ("server", "client", "external")

_BOM = b"\xef\xbb\xbf"
# One prolog item at a time: whitespace, a comment, a doctype / <!...>, a processing
# instruction, or a start tag (attribute values may hold ">" inside quotes).
_SPACE_RE = re.compile(rb"[ \t\r\n\f]+")
_COMMENT_RE = re.compile(rb"<!--.*?-->", re.S)
_DECL_RE = re.compile(rb"<[!?][^>]*>")
# The name is matched once, never given back (a lookahead and a backreference make it
# atomic on every Python): a quote in it is a name character, as HTML reads it, and a
# regex free to give name characters back tries every split of a long name (quadratic on
# "<a\"xxx..." without a ">").
_TAG_RE = re.compile(rb"<(?=([A-Za-z][^\s/>]*))\1(?:[^>\"']|\"[^\"]*\"|'[^']*')*>")
_NAME_END_RE = re.compile(rb"[\s/>]")
_ATTR_STOP_RE = re.compile(rb"[>\"']")
_HEAD_END_RE = re.compile(rb"</head[\s>]|<body[\s/>]", re.I)
# A deployment-id meta tag placed by the app: "<meta", then, before the tag's first ">",
# its name attribute (the two halves of one pattern, see _has_meta).
_META_START_RE = re.compile(rb"<meta\s", re.I)
_META_NAME_RE = re.compile(rb"\bname\s*=\s*[\"']?deployment-id[\"'\s/>]", re.I)

# The common document in one regex: prolog, <html ...>, <head ...>. Atomic groups and
# possessive quantifiers (Python 3.11+) keep it linear on any input; on 3.10 the
# incremental scanner alone does the work.
_FAST_HEAD_RE = (
    re.compile(
        rb"(?:\xef\xbb\xbf)?(?>[ \t\r\n\f]+|<!--.*?-->|<!(?!--)[^>]*+>|<\?[^>]*+>)*+"
        rb"(?><html(?=[\s/>])(?:[^>\"']|\"[^\"]*+\"|'[^']*+')*+>)?+"
        rb"(?>[ \t\r\n\f]+|<!--.*?-->)*+"
        rb"<head(?=[\s/>])(?:[^>\"']|\"[^\"]*+\"|'[^']*+')*+>",
        re.I | re.S,
    )
    if sys.version_info >= (3, 11)
    else None
)

_SCANNING, _IN_HEAD, _DONE = 0, 1, 2
# Where the start tag being read is (Injector._tag): in its name, between attributes, or
# in a quoted value (the quote's byte).
_IN_NAME, _IN_ATTRS = -1, 0


def head_tags(
    deployment_id: str,
    *,
    script_url: str,
    version_url: str,
    routing: str = "server",
    check_interval: float = 0,
    static_url: str = "/static/",
    nonce: str | None = None,
) -> str:
    """The tags that go into ``<head>``: the deployment id and the client script.

    The browser client reads ``meta[name=deployment-id]`` and ``script[data-deploysync]``
    with ``data-routing``, ``data-check-interval`` (seconds, 0: no periodic check),
    ``data-version-url`` and ``data-static-url`` (to tell a failed asset from others).
    Template helpers render this so pages carry the tags themselves.
    """
    esc = html.escape
    interval = f"{check_interval:g}"
    nonce_attr = f' nonce="{esc(nonce)}"' if nonce else ""
    return (
        f'<meta name="deployment-id" content="{esc(deployment_id)}">'
        f'<script type="module" src="{esc(script_url)}" data-deploysync'
        f' data-routing="{esc(routing)}" data-check-interval="{interval}"'
        f' data-version-url="{esc(version_url)}" data-static-url="{esc(static_url)}"'
        f"{nonce_attr}></script>"
    )


def inject_whole(body: bytes, snippet: bytes) -> tuple[bytes, bool]:
    """The same decision as :class:`Injector` for a body that is complete in one piece
    (most non-streaming responses), without the machine's bookkeeping.

    Returns the body to send and whether the snippet went in.
    """
    fast = _FAST_HEAD_RE.match(body) if _FAST_HEAD_RE is not None else None
    if fast is None:
        injector = Injector(snippet)
        out = injector.feed(body) + injector.finish()
        return out, injector.injected
    at = fast.end()
    limit = at + LOOKAHEAD
    # The head ends at "</head>" or "<body", whichever comes first, in any case (as the
    # machine reads it). bytes.find first bounds the case-insensitive regex's search by
    # the common spelling.
    end = body.find(b"</head>", at, limit)
    found = _HEAD_END_RE.search(body, at, limit if end < 0 else end + 7)
    end = found.start() if found else limit
    if _has_meta(body, at, end):
        return body, False
    view = memoryview(body)
    return b"".join((view[:at], snippet, view[at:])), True


def _has_meta(buf: bytes | bytearray, start: int, end: int) -> bool:
    """Whether ``buf[start:end]`` holds a ``<meta ... name="deployment-id" ...>`` tag.

    The same answer as one regex ``<meta\\s[^>]*?\\bname...`` but linear: the regex would
    read from every "<meta" to the next ">" again, quadratic on a head of unclosed
    "<meta " tags. A "<meta" before a tag's ">" finds only what the first one finds, so
    each stretch up to a ">" is read once.
    """
    # bytes.find first (the common spelling): the regexes only when they could match.
    if buf.find(b"eployment-", start, end) < 0 and buf.find(b"EPLOYMENT-", start, end) < 0:
        return False
    pos = start
    while True:
        tag = _META_START_RE.search(buf, pos, end)
        if tag is None:
            return False
        close = buf.find(b">", tag.end(), end)
        if _META_NAME_RE.search(buf, tag.end(), end if close < 0 else close + 1):
            return True
        if close < 0:
            return False
        pos = close + 1


class Injector:
    """Feed body chunks with :meth:`feed`, then call :meth:`finish`.

    ``decided`` turns true as soon as the output no longer depends on later input;
    ``injected`` tells whether the snippet went in (so Content-Length grows by
    ``len(snippet)``).
    """

    __slots__ = (
        "_buf",
        "_doc",
        "_fresh",
        "_insert",
        "_name_end",
        "_pos",
        "_scan",
        "_searched",
        "_seen",
        "_snippet",
        "_state",
        "_tag",
        "injected",
    )

    def __init__(self, snippet: bytes) -> None:
        self._snippet = snippet
        # Chunks accumulate in place: "buf + chunk" would copy all that is held for every
        # chunk, quadratic when an app streams small chunks.
        self._buf = bytearray()
        self._state = _SCANNING
        self._pos = 0
        self._doc = False
        self._insert = -1
        self._scan = 0
        self._searched = 0  # how many bytes were held when the meta was last looked for
        # The prolog item at _pos is incomplete: how far it has been read (the next chunk
        # resumes there instead of matching the item again from its start) and, for a
        # start tag, where its name ends and the state it was left in.
        self._seen = 0
        self._name_end = 0
        self._tag = _IN_NAME
        self._fresh = True  # the one-regex fast path is tried on the first data only
        self.injected = False

    @property
    def decided(self) -> bool:
        return self._state == _DONE

    def feed(self, chunk: bytes) -> bytes:
        """Take *chunk*; return the bytes that can be sent now (maybe ``b""``)."""
        if self._state == _DONE:
            return chunk
        self._buf += chunk
        return self._run(final=False)

    @property
    def snippet(self) -> bytes:
        return self._snippet

    @property
    def pristine(self) -> bool:
        """Nothing fed yet."""
        return self._state == _SCANNING and not self._buf and not self._pos

    @property
    def added(self) -> int:
        """How many bytes the injection added (0 when it did not inject)."""
        return len(self._snippet) if self.injected else 0

    def abandon(self) -> bytes:
        """Stop without injecting; return the held bytes unchanged."""
        if self._state == _DONE:
            return b""
        return self._give_up()

    def finish(self) -> bytes:
        """End of body: decide with what there is and return what is left."""
        if self._state == _DONE:
            return b""
        return self._run(final=True)

    # -- the machine ---------------------------------------------------------------------
    def _run(self, final: bool) -> bytes:
        buf = self._buf
        if self._state == _SCANNING:
            # Once the first data did not match, the incremental scanner goes on alone:
            # matching again from offset 0 on every chunk would be quadratic.
            fast = _FAST_HEAD_RE.match(buf) if _FAST_HEAD_RE and self._fresh and buf else None
            self._fresh = self._fresh and not buf
            found = fast.end() if fast else self._scan_prolog(buf, final)
            if found is None:
                return self._give_up() if final or len(buf) > LOOKAHEAD else b""
            if found < 0:
                return self._give_up()
            self._insert = self._scan = found
            self._state = _IN_HEAD
        # In the head: wait for its end (or <body>), the end of the body or the
        # lookahead limit, then look for a deployment-id meta placed by the app. A head
        # flushed early with such a meta goes out at once: held bytes are searched again
        # each time they have doubled, not on every chunk (which would be quadratic).
        end_match = _HEAD_END_RE.search(buf, max(self._insert, self._scan - 16))
        if end_match is None and not final and len(buf) <= LOOKAHEAD:
            self._scan = len(buf)
            if len(buf) >= 2 * self._searched:
                self._searched = len(buf)
                if _has_meta(buf, self._insert, len(buf)):
                    return self._give_up()
            return b""
        # The meta is looked for up to the lookahead past the insertion point, as in
        # inject_whole, whatever the chunks.
        limit = min(end_match.start() if end_match else len(buf), self._insert + LOOKAHEAD)
        if _has_meta(buf, self._insert, limit):
            return self._give_up()
        return self._inject()

    def _scan_prolog(self, buf: bytearray, final: bool) -> int | None:
        """Where the snippet goes; ``-1`` for "nowhere"; ``None`` to wait for more."""
        pos = self._pos
        if pos == 0 and buf.startswith(_BOM):
            pos = len(_BOM)
        elif pos == 0 and len(buf) < len(_BOM) and _BOM.startswith(buf) and not final:
            return None
        end = len(buf)
        while pos < end:
            if pos != self._pos:
                self._pos, self._seen, self._tag = pos, 0, _IN_NAME
            if buf[pos] != 0x3C:  # "<"
                match = _SPACE_RE.match(buf, pos)
                if match is None:
                    # Text before any tag: a fragment, or a document whose head is
                    # implied; only the latter is a page.
                    return pos if self._doc else -1
                pos = match.end()
                continue
            # Each kind of item is searched for its end from where the previous chunk
            # left off (_seen), with the same result as its regex (_COMMENT_RE,
            # _DECL_RE, _TAG_RE) on the whole buffer.
            if buf.startswith(b"<!--", pos):
                close = buf.find(b"-->", max(pos + 4, self._seen - 2))
                if close < 0:
                    self._seen = end
                    return None
                pos = close + 3
                continue
            if pos + 1 >= end:
                return None  # a lone "<" waits
            if buf[pos + 1] in b"!?":
                close = buf.find(b">", max(pos + 2, self._seen))
                if close < 0:
                    self._seen = end
                    return None
                self._doc = self._doc or buf[pos : pos + 9].lower() == b"<!doctype"
                pos = close + 1
                continue
            if not buf[pos + 1 : pos + 2].isalpha():
                return pos if self._doc else -1  # a "<" that cannot start a tag is text
            tag_end = self._tag_end(buf, pos)
            if tag_end < 0:
                return None  # an incomplete tag waits
            name = buf[pos + 1 : self._name_end].lower()
            if name == b"html":
                self._doc = True
                pos = tag_end
                continue
            if name == b"head":
                return tag_end
            if name == b"body":
                return pos
            return pos if self._doc else -1
        if pos != self._pos:
            self._pos, self._seen, self._tag = pos, 0, _IN_NAME
        return None

    def _tag_end(self, buf: bytearray, pos: int) -> int:
        """The end of the start tag at *pos* (a "<" and a letter), or -1 while incomplete.

        Its name runs to a space, "/" or ">" (a quote in it is part of it); then the first
        ">" outside quotes ends it. Bytes already read for this tag are not read again.
        """
        end = len(buf)
        at = max(pos + 2, self._seen)
        if self._tag == _IN_NAME:
            name_end = _NAME_END_RE.search(buf, at)
            self._name_end = end if name_end is None else name_end.start()
            if name_end is None:
                self._seen = end
                return -1
            self._tag, at = _IN_ATTRS, self._name_end
        while True:
            if self._tag != _IN_ATTRS:  # in a quoted value
                close = buf.find(self._tag, at)
                if close < 0:
                    self._seen = end
                    return -1
                self._tag, at = _IN_ATTRS, close + 1
            stop = _ATTR_STOP_RE.search(buf, at)
            if stop is None:
                self._seen = end
                return -1
            at = stop.end()
            if buf[stop.start()] == 0x3E:  # ">"
                return at
            self._tag = buf[stop.start()]

    def _give_up(self) -> bytes:
        self._state = _DONE
        out, self._buf = bytes(self._buf), bytearray()
        return out

    def _inject(self) -> bytes:
        self._state = _DONE
        self.injected = True
        buf, at = self._buf, self._insert
        self._buf = bytearray()
        with memoryview(buf) as view:
            # One copy of the body, not two (slicing copies).
            return b"".join((view[:at], self._snippet, view[at:]))
