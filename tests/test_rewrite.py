"""The reference scanners and URL helpers of deploysync.rewrite: tables, no I/O."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import pytest

from deploysync import rewrite
from deploysync.rewrite import MODULE, URL, Reference, resolve, retarget, scan_css, scan_js


def urls(refs: list[Reference], text: str) -> list[str]:
    # Every reference points at its own text (the span the rewriter replaces): the URL
    # itself, or its escaped form.
    for ref in refs:
        written = text[ref.start : ref.end]
        assert written == ref.url or ("\\" in written and "\\" not in ref.url), ref
    return [ref.url for ref in refs]


# -- CSS -------------------------------------------------------------------------------------

CSS_CASES = [
    ("a { background: url(img/a.png) }", ["img/a.png"]),
    ('a { background: url("img/a.png") }', ["img/a.png"]),
    ("a { background: url('img/a.png') }", ["img/a.png"]),
    ("a { background: url(  img/a.png  ) }", ["img/a.png"]),
    ('a { background: URL( "img/a.png" ) }', ["img/a.png"]),
    ('@import "b.css";', ["b.css"]),
    ("@import 'b.css' screen;", ["b.css"]),
    ("@import url(b.css);", ["b.css"]),
    ('@import url("b.css") layer(base);', ["b.css"]),
    ("@IMPORT /* why */ 'b.css';", ["b.css"]),
    ('src: url("f.woff2?v=1#iefix") format("woff2"), url(f.ttf)', ["f.woff2?v=1#iefix", "f.ttf"]),
    ("a { b: url(data:image/png;base64,iVBO) }", ["data:image/png;base64,iVBO"]),
    ("/* url(commented.png) */ a { }", []),
    ('a { content: "url(in-a-string.png)" }', []),
    ("a { content: 'it''s url(x.png)' }", []),
    ("a { b: my-url(x.png) }", []),
    ("a { b: url() }", []),
    ('a { b: url("") }', []),
    # Escapes are decoded; a URL that cannot be written back as it is stays alone.
    ("a { b: url(x\\(1\\).png) }", []),
    ("a { b: url(img/c\\.png) }", ["img/c.png"]),
    ('a { b: url("img/\\63 .png") }', ["img/c.png"]),
    ("a { b: url('img/\\000063.png') }", ["img/c.png"]),
    ('@import "th\\\neme\\.css";', ["theme.css"]),
    ("a { b: url(\\e.png) }", []),  # a hex escape: U+000E
    ("a { b: url(img/\\31 .png) }", ["img/1.png"]),  # its space ends the escape
    ('a { b: url("img/a\\"b.png") }', []),
    ("/*# sourceMappingURL=app.css.map */", ["app.css.map"]),
    ("/*@ sourceMappingURL=old.css.map */", ["old.css.map"]),
    ("a{}\n/* unterminated url(x.png)", []),
    ('a { b: url("unterminated.png) }', []),
    ("a { b: image-set(url(a.png) 1x, url(b.png) 2x) }", ["a.png", "b.png"]),
    # image-set()'s strings are URLs; those of type() and of other functions are not
    ('a { b: image-set(url(a.png) 1x, "a2x.png" 2x) }', ["a.png", "a2x.png"]),
    ("a { b: -webkit-image-set('a.png' 1x, 'b.png' 2x) }", ["a.png", "b.png"]),
    (
        'a { b: IMAGE-SET("a.avif" type("image/avif"), "a.jpg" type("image/jpeg")) }',
        ["a.avif", "a.jpg"],
    ),
    ('a { b: image-set(/* "c.png" */ "a.png" 1x) }', ["a.png"]),
    ('a { b: image-set("a.png" 1x); content: "b.png" }', ["a.png"]),
    ('a { b: my-image-set("a.png" 1x) }', []),
    ('a { b: image-set("unterminated.png', []),
    ('a { b: image-set("a\\"b.png" 1x) }', []),
    # Escaped characters in selectors (Tailwind's arbitrary values) start no string.
    (
        ".bg-\\[url\\(\\'\\/static\\/img\\/bg\\.png\\'\\)\\]{background-image:url(/static/img/bg.png)}"
        ".content-\\[\\'\\*\\'\\]{content:var(--tw-content)}.hero{background:url(img/hero.png)}",
        ["/static/img/bg.png", "img/hero.png"],
    ),
    ('.a\\"b { background: url(x.png) } .c { background: url(y.png) }', ["x.png", "y.png"]),
    ('a { b: image-set(\\" "a.png" 1x) }', ["a.png"]),
]


@pytest.mark.parametrize(("css", "expected"), CSS_CASES)
def test_scan_css(css: str, expected: list[str]) -> None:
    assert urls(scan_css(css), css) == expected


# -- JavaScript ------------------------------------------------------------------------------

JS_CASES = [
    # static imports and re-exports
    ('import a from "./a.js";', ["./a.js"]),
    ("import a from './a.js'", ["./a.js"]),
    ('import {b as c, d} from "./b.js"', ["./b.js"]),
    ('import * as ns from "../ns.js"', ["../ns.js"]),
    ('import def, { x } from "./x.js"', ["./x.js"]),
    ('import def, * as all from "./x.js"', ["./x.js"]),
    ('import from from "./from.js"', ["./from.js"]),
    ('import { from } from "./f.js"', ["./f.js"]),
    ('import {\n  a,\n  b,\n} from "./multi.js";', ["./multi.js"]),
    ('import { "string name" as s } from "./s.js"', ["./s.js"]),
    ('export * from "./re.js";', ["./re.js"]),
    ('export * as ns from "./re.js";', ["./re.js"]),
    ('export { a, b as c } from "./re.js";', ["./re.js"]),
    ('export { default } from "./re.js"', ["./re.js"]),
    ('import data from "./d.json" with { type: "json" };', ["./d.json"]),
    # side effects and dynamic imports
    ('import "./side.js";', ["./side.js"]),
    ("import'./side.js'", ["./side.js"]),
    ('const m = import("./dyn.js");', ["./dyn.js"]),
    ('const m = await import ( "./dyn.js" );', ["./dyn.js"]),
    ("import(`./tpl0.js`)", ["./tpl0.js"]),
    ('import("./j.json", { with: { type: "json" } })', ["./j.json"]),
    ('x ? import("./a.js") : import("./b.js")', ["./a.js", "./b.js"]),
    ('new URL("./img.png", import.meta.url)', ["./img.png"]),
    ("new URL('img.png', import.meta.url).href", ["img.png"]),
    ("//# sourceMappingURL=app.js.map", ["app.js.map"]),
    ("x()\n//@ sourceMappingURL=old.js.map\n", ["old.js.map"]),
    ("/*# sourceMappingURL=block.js.map */", ["block.js.map"]),
    # bare specifiers are found (resolve() leaves them alone)
    ('import React from "react";', ["react"]),
    # left alone: not a reference at all
    ('const s = "./x.js";', []),
    ("const s = './x.js', t = 'import \"./y.js\"';", []),
    ('// import "./comment.js"', []),
    ('/* import x from "./block.js" */', []),
    ('/*\n * import x from "./doc.js";\n */', []),
    ('const t = `import "./tpl.js" ${x}`;', []),
    ("import(`./page-${name}.js`)", []),
    ('import("./a" + ".js")', []),
    ("import(name)", []),
    ('obj.import("./method.js")', []),
    ('obj?.import("./method.js")', []),
    ('this.#import("./private-method.js")', []),
    ('obj./* a */ /* b */import("./method.js")', []),
    ('x = /* c */ import("./a.js")', ["./a.js"]),
    ('const o = { import: "./prop.js" }', []),
    ('class A { import() { return "./m.js" } }', []),
    ('new URL("./not-meta.png", base)', []),
    ('new URL("./not-meta.png")', []),
    ('"use strict"; const q = "\\"; import \\"./escaped.js\\"";', []),
    ('import "./esc\\u0061pe.js";', ["./escape.js"]),  # escapes are decoded
    ("import './\\x61\\u{62}\\c.js';", ["./abc.js"]),
    ('import "./a\\\nb.js";', ["./ab.js"]),  # a line continuation
    ('import "./\\uD83D\\uDE00.js";', ["./\U0001f600.js"]),  # a surrogate pair
    ('import "./\\uD83D.js";', []),  # a lone surrogate
    ('import "./a\\u00.js"; import "./\\0.js"; import "./\\".js";', []),
    ('import "./a\\\\b.js";', []),  # a backslash in the value: not written back
]


@pytest.mark.parametrize(("js", "expected"), JS_CASES)
def test_scan_js(js: str, expected: list[str]) -> None:
    assert urls(scan_js(js), js) == expected


REGEX_AND_DIVISION = [
    # A regex containing quotes and "import" must not start a string or a reference.
    ('const r = /import "\\.\\/re.js"/g; import "./after.js";', ["./after.js"]),
    ("const r = /['\"]/; import './after.js';", ["./after.js"]),
    ("const r = /[/'\"]/; import './after.js';", ["./after.js"]),
    ('if (x) /"/.test(y); import "./after.js";', ["./after.js"]),
    ('return /"/.test(y); import "./after.js";', ["./after.js"]),
    ('f(a, /"/); import "./after.js";', ["./after.js"]),
    ('x = [/"/]; import "./after.js";', ["./after.js"]),
    # Divisions are not regexes: the quote after them opens a real string.
    ('const d = a / 2 / import("./div.js");', ["./div.js"]),
    ('const d = (a) / 2; import "./after.js" // /', ["./after.js"]),
    ('const d = a[0] / b[1] / c; const s = "/"; import "./after.js";', ["./after.js"]),
    ('i++ / 2; import "./after.js";', ["./after.js"]),
    ('x = 1 / 2 / "s"; import "./after.js";', ["./after.js"]),
    # Template literals: nested substitutions, braces and backticks inside them.
    ("const t = `a ${ {b: `c ${d}`}.b } e`; import './after.js';", ["./after.js"]),
    ("const t = `${a}`; const u = `}`; import './after.js';", ["./after.js"]),
    ("const t = `\\` import './no.js'`; import './after.js';", ["./after.js"]),
    ("const t = `$ {x} import \"./no.js\"`; import './after.js';", ["./after.js"]),
    ("const t = `a ${ `import \"./no.js\"` } b`; import './after.js';", ["./after.js"]),
    ("#!/usr/bin/env node\nimport './after.js';", ["./after.js"]),
    ('return/"/.test(x); import "./after.js";', ["./after.js"]),
    ('typeof /"/; import "./after.js";', ["./after.js"]),
    ('x = y /* c */ / 2; import "./after.js";', ["./after.js"]),
    ('while (i) /"/.exec(s); import "./after.js";', ["./after.js"]),
    ('f() / 2 / g(); const s = "/"; import "./after.js";', ["./after.js"]),
    ('const a = b.new / 2; obj.new("./x.js"); import "./after.js";', ["./after.js"]),
    ('x = {}; /"/.test(s); import "./after.js";', ["./after.js"]),
    ("const f = (s) => s.replace(/'/g, '\\''); import './after.js';", ["./after.js"]),
    ("const s = 'a\\'b'; import './after.js';", ["./after.js"]),
    ('const s = "a\\\\"; import "./after.js";', ["./after.js"]),
    ("const s = 'line\\\ncontinued'; import './after.js';", ["./after.js"]),
    # "of" is a name outside "for (... of ...)": minifiers name variables so.
    ('let of=4,a=of/2;import("./x.js");let b=a/2', ["./x.js"]),
    ("for (const x of /a/g.exec(s)) f(x); import './after.js';", ["./after.js"]),
    ("for await (const x of /'/.exec(s)) f(x); import './after.js';", ["./after.js"]),
    ('export default /"/;import("./a.js")', ["./a.js"]),
    ('const d = x.default / 2 / import("./div.js");', ["./div.js"]),
]


@pytest.mark.parametrize(("js", "expected"), REGEX_AND_DIVISION)
def test_scan_js_regex_division_templates(js: str, expected: list[str]) -> None:
    assert urls(scan_js(js), js) == expected


def test_scan_js_minified_bundle() -> None:
    bundle = (
        'import{a as b}from"./chunk-A1.js";import"./side-B2.js";'
        'const c=/\\/(?:x|y)"\\//g,d=e/f/g,h=`${b}/"${c}`;'
        'export{b as default}from"./chunk-C3.js";'
        'const i=()=>import("./lazy-D4.js");'
        'var j={import:1,from:"./no.js"};j.import;'
        "//# sourceMappingURL=index.js.map\n"
    )
    assert urls(scan_js(bundle), bundle) == [
        "./chunk-A1.js",
        "./side-B2.js",
        "./chunk-C3.js",
        "./lazy-D4.js",
        "index.js.map",
    ]


def test_scan_js_unterminated_input_does_not_crash() -> None:
    for text in ('import "./a.js', "const t = `${", "/* open", "x = /[", "import(", "'"):
        scan_js(text + "\nimport './b.js'")


def test_scan_js_kinds() -> None:
    js = 'import "./a.js"; new URL("b.png", import.meta.url);\n//# sourceMappingURL=c.map'
    assert [r.kind for r in scan_js(js)] == [MODULE, URL, URL]


def test_text_without_import_words_is_not_tokenized() -> None:
    assert scan_js("const x = 1 / 2;" * 100) == []


def test_scanner_for() -> None:
    assert rewrite.scanner_for("css/App.CSS") is scan_css
    assert rewrite.scanner_for("js/app.mjs") is scan_js
    assert rewrite.scanner_for("img/a.png") is None


def test_line_of() -> None:
    assert rewrite.line_of("a\nb\nc", 0) == 1
    assert rewrite.line_of("a\nb\nc", 4) == 3
    # as JavaScript counts lines: CR alone, CR LF once, the Unicode separators
    assert rewrite.line_of("a\rb\rc", 4) == 3
    assert rewrite.line_of("a\r\nb\r\nc", 6) == 3
    assert rewrite.line_of("a\u2028b\u2029c", 4) == 3
    # many offsets at once, counted through the text once
    assert rewrite.lines_of("a\r\nb\rc\nd", [7, 0, 5, 3, 3]) == {0: 1, 3: 2, 5: 3, 7: 4}
    # an offset between CR and LF: the pair is still one line break
    assert rewrite.lines_of("a\r\nb\r\nc", [2, 6]) == {2: 2, 6: 3}
    # CSS: a form feed breaks a line, U+2028 does not
    assert rewrite.lines_of("a\u2028b\fc\nd", [6], rewrite.CSS_BREAKS) == {6: 3}


@pytest.mark.parametrize(
    ("js", "expected"),
    [
        # a "*/" that ends a regex, not a comment: what precedes the next import is code
        ('x = /a*/\nimport("./z.js")', ["./z.js"]),
        ('x = /a*/.source\n/* c */ import("./z.js")', ["./z.js"]),
        ('y = 1 /* c */ / 2 / 3; import("./z.js")', ["./z.js"]),
        ('a./* c */\n/* d */import("./no.js")', []),
    ],
)
def test_scan_js_around_comments(js: str, expected: list[str]) -> None:
    assert urls(scan_js(js), js) == expected


# -- resolving and retargeting ---------------------------------------------------------------

RESOLVE_CASES = [
    # (url, kind, referrer, static_url, expected logical path)
    ("img/a.png", URL, "css/app.css", "/static/", "css/img/a.png"),
    ("../img/a.png", URL, "css/app.css", "/static/", "img/a.png"),
    ("./a.png?v=1#x", URL, "css/app.css", "/static/", "css/a.png"),
    ("/static/img/a.png", URL, "css/app.css", "/static/", "img/a.png"),
    ("/static/img/my%20img.png", URL, "css/app.css", "/static/", "img/my img.png"),
    ("my%20img.png", URL, "app.css", "/static/", "my img.png"),
    ("caf%C3%A9.png", URL, "app.css", "/static/", "café.png"),
    ("café.png", URL, "app.css", "/static/", "café.png"),
    ("/other/img/a.png", URL, "css/app.css", "/static/", None),
    # Folders, and names with an encoded separator (one segment to a browser): not files.
    ("../img/a.png/.", URL, "css/app.css", "/static/", None),
    ("../img/a.png/..", URL, "css/app.css", "/static/", None),
    ("../img%2Fa.png", URL, "css/app.css", "/static/", None),
    ("/static/img%5ca.png", URL, "css/app.css", "/static/", None),
    ("https://cdn.example/a.png", URL, "app.css", "/static/", None),
    ("//cdn.example/a.png", URL, "app.css", "/static/", None),
    ("data:image/png;base64,AA", URL, "app.css", "/static/", None),
    ("blob:https://x/1", URL, "app.css", "/static/", None),
    ("#frag", URL, "app.css", "/static/", None),
    ("img/", URL, "app.css", "/static/", None),
    ("../../outside.png", URL, "css/app.css", "/static/", "../outside.png"),
    ("./b.js", MODULE, "js/a.js", "/static/", "js/b.js"),
    ("../lib/b.js", MODULE, "js/a.js", "/static/", "lib/b.js"),
    ("/static/js/b.js", MODULE, "js/a.js", "/static/", "js/b.js"),
    ("b.js", MODULE, "js/a.js", "/static/", None),  # a bare specifier
    ("react", MODULE, "js/a.js", "/static/", None),
    ("https://cdn.example/static/a.png", URL, "app.css", "https://cdn.example/static/", "a.png"),
    ("/static/a.png", URL, "app.css", "https://cdn.example/static/", None),
    ("a.png", URL, "app.css", "https://cdn.example/static/", "a.png"),
]


@pytest.mark.parametrize(("url", "kind", "referrer", "static_url", "expected"), RESOLVE_CASES)
def test_resolve(url: str, kind: str, referrer: str, static_url: str, expected: str | None) -> None:
    ref = Reference(0, len(url), url, kind)
    assert resolve(ref, referrer, static_url) == expected


RETARGET_CASES = [
    ("img/a.png", "css/img/a.0123456789ab.png", "img/a.0123456789ab.png"),
    ("./a.js", "js/a.0123456789ab.js", "./a.0123456789ab.js"),
    ("../img/a.png?v=1#x", "img/a.0123456789ab.png", "../img/a.0123456789ab.png?v=1#x"),
    ("/static/img/a.png", "img/a.0123456789ab.png", "/static/img/a.0123456789ab.png"),
    ("a.png", "a.0123456789ab.png", "a.0123456789ab.png"),
    ("my%20img.png", "my img.0123456789ab.png", "my%20img.0123456789ab.png"),
    ("my img.png", "my img.0123456789ab.png", "my%20img.0123456789ab.png"),
    ("café.png", "café.0123456789ab.png", "caf%C3%A9.0123456789ab.png"),
    ("q'uote(1).png", "q'uote(1).0123456789ab.png", "q%27uote%281%29.0123456789ab.png"),
    ("a:b.png", "a:b.0123456789ab.png", "a%3Ab.0123456789ab.png"),
]


@pytest.mark.parametrize(("url", "new_name", "expected"), RETARGET_CASES)
def test_retarget(url: str, new_name: str, expected: str) -> None:
    assert retarget(url, new_name) == expected


def test_apply_replaces_only_the_given_spans() -> None:
    css = 'a{b:url(x.png)} c{d:url("x.png")} /* url(x.png) */'
    refs = scan_css(css)
    out = rewrite.apply(css, refs, lambda ref: "y.png" if ref.start < 20 else None)
    assert out == 'a{b:url(y.png)} c{d:url("x.png")} /* url(x.png) */'


def test_apply_without_changes_returns_the_same_text() -> None:
    text = "import './a.js'"
    assert rewrite.apply(text, scan_js(text), lambda ref: None) is text


# -- hostile inputs: the work stays bounded -------------------------------------------------
# Timings are not tested; what is asserted is the shape of the work (calls, tokens), which a
# quadratic scanner would exceed by orders of magnitude, and that the answers are unchanged.


@pytest.mark.parametrize("space", [" ", "\t", "\n", " \n\t"])
def test_scan_css_url_with_long_space_run(space: str) -> None:
    spaces = space * 2000
    assert scan_css("a{b:url(" + spaces) == []
    assert scan_css("a{b:url(" + spaces + "x.png") == []
    assert scan_css("a{b:url(" + spaces + ")}") == []
    css = "a{b:url(" + spaces + "x.png" + spaces + ")} c{d:url(y.png)}"
    assert urls(scan_css(css), css) == ["x.png", "y.png"]


def test_css_unquoted_url_pattern_on_the_backtracking_shape() -> None:
    # "\s*" then an optional URL then ")": the spaces have a single owner.
    pattern = rewrite._CSS_UNQUOTED_URL
    assert pattern.match("   ") is None
    assert pattern.match("   x   ") is None
    assert pattern.match("  x y )") is None
    assert pattern.match("   )").group(1) is None  # type: ignore[union-attr]
    match = pattern.match("  a.png  )")
    assert match is not None
    assert (match.group(1), match.end()) == ("a.png", 10)


def test_scan_js_tries_the_regex_pattern_once_per_line(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    class Counting:
        def match(self, text: str, pos: int) -> re.Match[str] | None:
            calls.append(pos)
            return REGEX.match(text, pos)

    monkeypatch.setattr(rewrite, "_REGEX", Counting())
    js = "import a from './a.js'\n" + "/[(" * 3000 + "\nx = (/[/]/); import './b.js'"
    assert urls(scan_js(js), js) == ["./a.js", "./b.js"]
    # Every "/" of the long line may open a literal; only the first is matched by the
    # pattern (reading to the end of the line), the others by the memoised automaton.
    assert len(calls) == 2


REGEX = rewrite._REGEX


def test_regex_literal_automaton_agrees_with_the_pattern() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choice("/[]\\\r\na* ") for _ in range(rng.randint(1, 30)))
        literals = rewrite._RegexLiterals(text)
        literals._read_line(0)  # as after a failure at 0: every later "/" uses the automaton
        for start, char in enumerate(text):
            if char == "/" and 0 < start < literals._line_end:
                match = REGEX.match(text, start)
                expected = match.end() if match else -1
                assert literals.end(start, -1) == expected, (text, start)


def counting_tokens(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    count = [0]
    tokens = rewrite._tokens

    def counted(text: str, pos: int) -> Iterator[tuple[str, int, int]]:
        for token in tokens(text, pos):
            count[0] += 1
            yield token

    monkeypatch.setattr(rewrite, "_tokens", counted)
    return count


@pytest.mark.parametrize("unit", ["import{", "import a,", "export{import{", "import{a}from{"])
def test_scan_js_reads_each_clause_token_about_once(
    monkeypatch: pytest.MonkeyPatch, unit: str
) -> None:
    count = counting_tokens(monkeypatch)
    js = unit * 3000 + 'import{a}from"./x.js"'
    refs = urls(scan_js(js), js)
    # The last import finds its specifier (as do the keywords whose clause reaches it).
    assert refs[-1:] == ["./x.js"] and set(refs) == {"./x.js"}
    # One walk per keyword would read up to 2000 tokens each (millions here).
    assert count[0] <= 2 * len(js)


def test_clause_regions_agree_with_the_token_walk() -> None:
    rng = random.Random(11)
    pieces = ["{", "}", ",", "*", "a", "from", "as", "'./a.js'", '"b"', ";", "`t`", "(", "import"]
    for _ in range(3000):
        text = " ".join(rng.choice(pieces) for _ in range(rng.randint(1, 25)))
        clauses = rewrite._Clauses(text)
        for first in rewrite._tokens(text, 0):
            expected = rewrite._from_clause(text, rewrite._tokens(text, first[1]))
            assert clauses.reference(first) == expected, (text, first)


@pytest.mark.parametrize("names", [997, 998, 999, 1000])
def test_clause_length_limit_is_kept(names: int) -> None:
    # "{", 2 tokens per "a,", "}", then "from" is token number 2 * names + 2 (from 0).
    js = "import {" + "a," * names + '} from "./x.js"'
    expected = ["./x.js"] if 2 * names + 2 < rewrite._MAX_CLAUSE_TOKENS else []
    assert urls(scan_js(js), js) == expected
