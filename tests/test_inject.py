"""The streaming HTML injector: where the tags go, whatever the chunking."""

from __future__ import annotations

import pytest

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
