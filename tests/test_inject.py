"""The streaming HTML injector: where the tags go, whatever the chunking."""

from __future__ import annotations

import random
import re
import sys

import pytest

from deploysync import inject
from deploysync.inject import LOOKAHEAD, Injector, head_tags, inject_whole

SNIP = b"<!--S-->"


def run(chunks: list[bytes]) -> tuple[bytes, bool]:
    injector = Injector(SNIP)
    out = b"".join(injector.feed(c) for c in chunks) + injector.finish()
    return out, injector.injected


def split_everywhere(doc: bytes) -> list[list[bytes]]:
    """Every way of cutting *doc* in two, and one byte at a time."""
    cuts = [[doc[:i], doc[i:]] for i in range(len(doc) + 1)]
    cuts.append([doc[i : i + 1] for i in range(len(doc))])
    return cuts


CASES = [
    # (document, expected output)
    (
        b"<html><head><title>x</title></head></html>",
        b"<html><head><!--S--><title>x</title></head></html>",
    ),
    (
        b"<!DOCTYPE html><HTML><HEAD><title>x</title></HEAD>",
        b"<!DOCTYPE html><HTML><HEAD><!--S--><title>x</title></HEAD>",
    ),
    (b"\xef\xbb\xbf<!doctype html><head>", b"\xef\xbb\xbf<!doctype html><head><!--S-->"),
    (
        b'<!-- <head> in a comment --><html lang="en"><head data-x="a>b">t',
        b'<!-- <head> in a comment --><html lang="en"><head data-x="a>b"><!--S-->t',
    ),
    (
        b"\n  <?xml version='1.0'?>\n<html>\n<head\n  id=h>",
        b"\n  <?xml version='1.0'?>\n<html>\n<head\n  id=h><!--S-->",
    ),
    (b"<!doctype html><html><body>hi</body>", b"<!doctype html><html><!--S--><body>hi</body>"),
    (b"<!doctype html><title>t</title><p>x", b"<!doctype html><!--S--><title>t</title><p>x"),
    (b"<body><p>x</p></body>", b"<!--S--><body><p>x</p></body>"),
    (b"<!doctype html>text first", b"<!doctype html><!--S-->text first"),
    (b"<html><header>nav</header>", b"<html><!--S--><header>nav</header>"),
]


@pytest.mark.parametrize(("doc", "expected"), CASES)
def test_injects_in_one_chunk(doc: bytes, expected: bytes) -> None:
    assert run([doc]) == (expected, True)


@pytest.mark.parametrize(("doc", "expected"), CASES)
def test_injects_whatever_the_chunking(doc: bytes, expected: bytes) -> None:
    for chunks in split_everywhere(doc):
        assert run(chunks) == (expected, True), chunks


UNTOUCHED = [
    b"",
    b"<div>a fragment, like an htmx partial</div>",
    b"plain text",
    b"   <tr><td>1</td></tr>",
    b'<html><head><meta name="deployment-id" content="x"></head>',
    b"<html><head><title>t</title><META NAME='deployment-id' content=x></head>",
    b"<html><head><meta charset=utf-8><meta name=deployment-id content=x></head>",
    b"<!doctype html><html><!-- never closed",
]


@pytest.mark.parametrize("doc", UNTOUCHED)
def test_leaves_alone(doc: bytes) -> None:
    for chunks in split_everywhere(doc):
        assert run(chunks) == (doc, False), chunks


def test_meta_after_head_end_does_not_count() -> None:
    doc = b"<html><head></head><body><meta name=deployment-id></body>"
    out, injected = run([doc])
    assert injected
    assert out.startswith(b"<html><head><!--S--></head>")


def test_passes_through_after_deciding() -> None:
    injector = Injector(SNIP)
    first = injector.feed(b"<html><head></head>")
    assert injector.decided
    assert first == b"<html><head><!--S--></head>"
    assert injector.feed(b"<head>again</head>") == b"<head>again</head>"
    assert injector.finish() == b""


def test_waits_for_end_of_head_only_up_to_the_lookahead() -> None:
    injector = Injector(SNIP)
    assert injector.feed(b"<html><head>") == b""
    assert not injector.decided
    filler = b"<script>" + b"x" * LOOKAHEAD + b"</script>"
    out = injector.feed(filler)
    assert injector.decided
    assert out == b"<html><head><!--S-->" + filler


def test_gives_up_without_a_tag_in_the_lookahead() -> None:
    injector = Injector(SNIP)
    comment = b"<!--" + b"x" * (LOOKAHEAD + 10)
    out = injector.feed(comment)
    assert injector.decided
    assert not injector.injected
    assert out == comment
    assert injector.feed(b"--><head>") == b"--><head>"


def test_never_holds_more_than_the_lookahead() -> None:
    injector = Injector(SNIP)
    held = 0
    for _ in range(200):
        out = injector.feed(b"<!-- " + b"y" * 1000)
        held = held + 1005 - len(out) if not out else 0
        assert held <= LOOKAHEAD + 1005
    assert injector.decided


def test_abandon_returns_what_is_held() -> None:
    injector = Injector(SNIP)
    assert injector.feed(b"<html><he") == b""
    assert injector.abandon() == b"<html><he"
    assert injector.added == 0
    assert injector.feed(b"ad>") == b"ad>"


def test_added_counts_the_snippet() -> None:
    injector = Injector(SNIP)
    injector.feed(b"<head></head>")
    assert injector.added == len(SNIP)


def test_head_tags() -> None:
    html = head_tags(
        "abc",
        script_url="/app/_deploysync/client-0123456789ab.js",
        version_url="/app/_deploysync/version",
        routing="client",
        check_interval=30,
        static_url="/app/assets/",
        nonce='n"<',
    )
    assert html == (
        '<meta name="deployment-id" content="abc">'
        '<script type="module" src="/app/_deploysync/client-0123456789ab.js" data-deploysync'
        ' data-routing="client" data-check-interval="30"'
        ' data-version-url="/app/_deploysync/version" data-static-url="/app/assets/"'
        ' nonce="n&quot;&lt;"></script>'
    )


def test_head_tags_without_nonce() -> None:
    html = head_tags("abc", script_url="/s.js", version_url="/v", check_interval=0.5)
    assert "nonce" not in html
    assert 'data-check-interval="0.5"' in html
    assert 'data-routing="server"' in html


@pytest.mark.parametrize(("doc", "expected"), CASES)
def test_inject_whole_agrees_with_the_machine(doc: bytes, expected: bytes) -> None:
    assert inject_whole(doc, SNIP) == (expected, True)


@pytest.mark.parametrize("doc", UNTOUCHED)
def test_inject_whole_leaves_alone(doc: bytes) -> None:
    assert inject_whole(doc, SNIP) == (doc, False)


# -- small chunks: each byte is read about once ------------------------------------------
# Timings are not tested; what is asserted is that an unfinished prolog item is not read
# again from its start on every chunk (quadratic with 1-byte chunks), and that the answer
# does not change.


class CountingPattern:
    """A compiled pattern that counts the bytes its calls could read."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.pattern = pattern
        self.read = 0

    def match(self, buf: bytes, pos: int = 0) -> re.Match[bytes] | None:
        self.read += len(buf) - pos
        return self.pattern.match(buf, pos)


HOSTILE_PROLOGS = [
    (b"<!--", b"x", b"--><head>", True),  # an unclosed comment
    (b"<!doctype ", b"x", b"><head>", True),  # a long doctype
    (b"<html data-x='", b"x", b"'><head>", True),  # a long attribute value
    (b"<html data-x='", b">", b"'><head>", True),  # ">" inside the value
    (b"<html data-x=", b"x", b"><head>", True),  # unquoted
    (b"<htm", b"l", b"><head>", False),  # a long tag name (not <html>: a fragment)
]


@pytest.mark.parametrize(("start", "filler", "end", "injected"), HOSTILE_PROLOGS)
def test_one_byte_chunks_resume_where_the_last_stopped(
    monkeypatch: pytest.MonkeyPatch, start: bytes, filler: bytes, end: bytes, injected: bool
) -> None:
    patterns = {name: CountingPattern(getattr(inject, name)) for name in ("_TAG_RE", "_COMMENT_RE")}
    for name, pattern in patterns.items():
        monkeypatch.setattr(inject, name, pattern)
    fast = None
    if inject._FAST_HEAD_RE is not None:
        fast = CountingPattern(inject._FAST_HEAD_RE)
        monkeypatch.setattr(inject, "_FAST_HEAD_RE", fast)
    doc = start + filler * 5000 + end
    injector = Injector(SNIP)
    out = injector.feed(start)
    for _ in range(5000):
        out += injector.feed(filler)
        assert not injector.decided
        assert injector._seen == len(injector._buf)  # the next byte is read from here
    out += injector.feed(end) + injector.finish()
    # The regexes that would read the item from its start again are not run per chunk.
    assert sum(pattern.read for pattern in patterns.values()) == 0
    assert fast is None or fast.read <= len(start)
    assert injector.injected is injected
    assert (out, injector.injected) == run([doc])


def test_any_chunking_gives_the_answer_of_one_chunk() -> None:
    rng = random.Random(5)
    pieces = [b"<", b">", b"<!--", b"-->", b"-", b"<!doctype html>", b"<!", b"<?x", b"<html",
              b"<head", b"<body", b"<title>", b" ", b"\n", b'"', b"'", b"a", b"x=",
              b"<meta name=deployment-id>", b"</head>", b"/", b"<HTML", b"<Head>"]  # fmt: skip
    for _ in range(3000):
        doc = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 20)))
        cuts = sorted(rng.sample(range(len(doc) + 1), min(len(doc) + 1, rng.randint(1, 6))))
        chunks = [doc[a:b] for a, b in zip([0, *cuts], [*cuts, len(doc)], strict=True)]
        assert run(chunks) == run([doc]), chunks
        assert run([doc[i : i + 1] for i in range(len(doc))]) == run([doc]), doc


@pytest.mark.parametrize(
    "before", [b"<style>" + b"x" * LOOKAHEAD + b"</style>", b""], ids=["long-head", "short"]
)
def test_a_meta_past_the_lookahead_counts_the_same_whatever_the_chunks(before: bytes) -> None:
    doc = b"<!doctype html><html><head>" + before + b"<meta name=deployment-id></head><body>"
    whole = inject_whole(doc, SNIP)
    assert whole[1] is bool(before)  # past the lookahead: not seen, the tags go in
    assert run([doc]) == whole
    assert run([doc[i : i + 4096] for i in range(0, len(doc), 4096)]) == whole


# -- the app's own deployment-id meta: found in one reading ------------------------------

# What the meta search answered when it was one regex (quadratic on unclosed tags).
ONE_REGEX = re.compile(rb"<meta\s[^>]*?\bname\s*=\s*[\"']?deployment-id[\"'\s/>]", re.I)


def test_meta_search_agrees_with_one_regex() -> None:
    rng = random.Random(11)
    pieces = [b"<meta ", b"<META\n", b"<meta", b">", b"<", b" ", b"x", b"name", b"NAME",
              b"=", b" = ", b'"', b"'", b"deployment-id", b"DEPLOYMENT-ID", b"/", b"-",
              b"<meta name=deployment-id>", b"aname=deployment-id"]  # fmt: skip
    for _ in range(5000):
        doc = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        start = rng.randint(0, len(doc))
        end = rng.randint(start, len(doc))
        expected = ONE_REGEX.search(doc, start, end) is not None
        assert inject._has_meta(doc, start, end) is expected, (doc, start, end)


class CountingSearch:
    """A compiled pattern that counts the bytes its searches could read."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.pattern = pattern
        self.read = 0

    def search(self, buf: bytes, pos: int = 0, endpos: int = sys.maxsize) -> re.Match[bytes] | None:
        self.read += min(endpos, len(buf)) - pos
        return self.pattern.search(buf, pos, endpos)


@pytest.mark.parametrize("chunk", [1, 7, None])
@pytest.mark.parametrize(
    "filler", [b"<meta ", b"<meta name=", b"<meta x deployment-x ", b"<meta name=deployment-"]
)
def test_unclosed_meta_tags_are_read_once(
    monkeypatch: pytest.MonkeyPatch, chunk: int | None, filler: bytes
) -> None:
    patterns = {
        name: CountingSearch(getattr(inject, name)) for name in ("_META_START_RE", "_META_NAME_RE")
    }
    for name, pattern in patterns.items():
        monkeypatch.setattr(inject, name, pattern)
    doc = b"<!doctype html><html><head>" + filler * 2000 + b"deployment-x</head><body>"
    if chunk is None:
        out, injected = inject_whole(doc, SNIP)
    else:
        out, injected = run([doc[i : i + chunk] for i in range(0, len(doc), chunk)])
    assert injected
    assert out == doc.replace(b"<head>", b"<head>" + SNIP, 1)
    # Each byte of the head read a few times (once per doubling of the held bytes, and
    # at the end), not once per "<meta" (2,000 here).
    assert sum(pattern.read for pattern in patterns.values()) <= 8 * len(doc)


def test_a_long_meta_tag_in_small_chunks_is_found() -> None:
    doc = b"<html><head><meta" + b" " * 2000 + b"name=deployment-id content=x></head>"
    assert run([doc[i : i + 1] for i in range(len(doc))]) == (doc, False)
    assert run([doc]) == (doc, False)


def test_an_early_flushed_head_with_the_apps_meta_goes_out_at_once() -> None:
    injector = Injector(SNIP)
    start = b'<!doctype html><html><head><meta name="deployment-id" content="x">'
    assert injector.feed(start) == start  # not held until </head>
    assert injector.decided and not injector.injected
    assert injector.feed(b"<title>t</title></head>") == b"<title>t</title></head>"


# -- one decision, however the body arrives ----------------------------------------------


def test_a_body_in_one_piece_gets_the_answer_of_the_machine() -> None:
    """inject_whole (one ASGI message, most WSGI pages) and the machine (a streamed page)
    place the tags alike: a head that ends at "<body" before "</head>" (a template in a
    script, a comment) included."""
    rng = random.Random(17)
    pieces = [b"<!doctype html>", b"<html>", b"<head>", b"<HEAD>", b"</head>", b"</HEAD>",
              b"<body>", b"<BODY>", b"<Body x>", b"<script>", b"</script>", b'"', b"<br>",
              b"<base href=/>", b"<title>t</title>", b"<!-- <body> -->", b"x", b" ",
              b'<meta name="deployment-id" content="X">', b"<b>"]  # fmt: skip
    for _ in range(4000):
        doc = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        assert inject_whole(doc, SNIP) == run([doc]), doc
        assert inject_whole(doc, SNIP) == run([doc[i : i + 3] for i in range(0, len(doc), 3)])


def test_a_body_tag_in_a_head_script_ends_the_head_in_one_piece_too() -> None:
    doc = (
        b'<!doctype html><html><head><script>var tpl = "<body>";</script>'
        b'<meta name="deployment-id" content="X"></head><body>x'
    )
    whole = inject_whole(doc, SNIP)
    assert whole[1] is True  # the meta is read as past the head's end, as when streamed
    assert whole == run([doc[i : i + 7] for i in range(0, len(doc), 7)])


def test_a_quote_in_a_tag_name_is_part_of_the_name() -> None:
    """As HTML reads ``<a"b x="y>``: the tag's name is ``a"b`` and the quoted value runs
    past the ">". A regex free to give the quote back would close the tag there instead,
    after trying every split of the name (quadratic on a long one without a ">")."""
    assert inject._TAG_RE.match(b'<a"b x="y>z') is None
    match = inject._TAG_RE.match(b'<a"b x="y>z" c>')
    assert match is not None and match.group(1) == b'a"b' and match.end() == 15
    doc = b'<a"b x="y>z' + b"x" * 2000 + b'"><head>'
    assert run([doc]) == run([doc[i : i + 1] for i in range(len(doc))]) == inject_whole(doc, SNIP)
    hostile = b'<a"' + b"x" * 50_000  # read once: 50 KB of a name, no ">"
    assert inject_whole(hostile, SNIP) == (hostile, False)
