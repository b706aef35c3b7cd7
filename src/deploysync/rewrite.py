"""Finding and rewriting the references a CSS file or a JS module makes to other assets.

The scanners work on tokens, not on the raw text: a path inside a comment, inside an
unrelated string or inside a template literal is never mistaken for a reference. What they
recognise:

* CSS: ``url(...)`` (quoted or not), ``@import "x.css"`` (``@import url(x.css)`` is a
  ``url()``), ``/*# sourceMappingURL=... */``.
* JS modules: ``import ... from "x"``, ``export ... from "x"``, ``import "x"``,
  ``import("x")`` with a literal, ``new URL("x", import.meta.url)``,
  ``//# sourceMappingURL=...``.

Both return :class:`Reference` objects (where the URL text sits in the source and what it
says); :func:`resolve` maps one to a logical path of the deployment and :func:`retarget`
builds the URL that points at the hashed name while keeping the reference's form.
"""

from __future__ import annotations

import posixpath
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from urllib.parse import unquote

from .manifest import url_path

#: ``kind`` of a reference resolved like a URL: ``img/x.png`` is relative.
URL = "url"
#: ``kind`` of a module specifier: ``react`` is a bare specifier, not a path.
MODULE = "module"

CSS_SUFFIXES = (".css",)
JS_SUFFIXES = (".js", ".mjs")

# A scheme (http:, data:, blob:, javascript:), protocol-relative or fragment-only URL
# never points into the deployment.
_EXTERNAL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:|//|#")
_SOURCE_MAP = re.compile(r"[#@][ \t]*sourceMappingURL=([^\s*]+)")


@dataclass(frozen=True, slots=True)
class Reference:
    """A URL written in a source file at ``text[start:end]``: *url* is that text, with
    its escapes decoded when it has any."""

    start: int
    end: int
    url: str
    kind: str = URL


def scanner_for(path: str) -> Callable[[str], list[Reference]] | None:
    """The scanner for the file at logical *path*, or ``None`` when it has no references."""
    lowered = path.lower()
    if lowered.endswith(CSS_SUFFIXES):
        return scan_css
    if lowered.endswith(JS_SUFFIXES):
        return scan_js
    return None


def line_of(text: str, offset: int) -> int:
    """The 1-based line number of *offset* in *text* (line breaks as JavaScript counts
    them: CR LF, CR, LF, U+2028, U+2029)."""
    return lines_of(text, [offset])[offset]


# Line breaks besides CR, LF and CR LF: JavaScript's (ECMA-262 §12.3), CSS's (CSS Syntax
# §3.3, where U+2028 is an ordinary character).
JS_BREAKS = ("\u2028", "\u2029")
CSS_BREAKS = ("\f",)


def lines_of(
    text: str, offsets: Iterable[int], breaks: tuple[str, ...] = JS_BREAKS
) -> dict[int, int]:
    """The line number of each of *offsets*, counted in one pass through *text* (a file
    with many warnings is not read once per warning); *breaks*: the line breaks of its
    language besides CR, LF and CR LF."""
    found: dict[int, int] = {}
    line, pos = 1, 0
    marks = ("\n", "\r", *breaks)
    for offset in sorted(set(offsets)):
        line += sum(text.count(mark, pos, offset) for mark in marks)
        line -= text.count("\r\n", max(pos - 1, 0), offset)  # a CR LF across two segments too
        found[offset] = line
        pos = offset
    return found


# -- CSS -------------------------------------------------------------------------------------

# An escape ("\\'" in a selector Tailwind writes) is read as a whole: the character after
# the backslash starts nothing.
_CSS_EVENT = re.compile(
    r"\\[\s\S]|/\*|\"|'|(?<![\w-])url\(|@import(?![\w-])|(?<![\w-])(?:-webkit-)?image-set\(",
    re.IGNORECASE,
)
# Inside image-set(): its strings are URLs too, those of nested functions (type()) not.
_CSS_IMAGE_SET_EVENT = re.compile(r"\\[\s\S]|/\*|\"|'|\(|\)|(?<![\w-])url\(", re.IGNORECASE)
_CSS_STRINGS = {
    '"': re.compile(r'"((?:[^"\\\n]|\\[\s\S])*)("?)'),
    "'": re.compile(r"'((?:[^'\\\n]|\\[\s\S])*)('?)"),
}
_CSS_SPACE = re.compile(r"(?:\s|/\*[\s\S]*?\*/)*")
# The URL is optional as a whole (not a possibly empty group between two "\s*"), so the
# spaces of "url(   " with no ")" can only be taken by the first "\s*": backtracking
# over them costs one step each, not a rescan of the rest (quadratic on a long run).
_CSS_UNQUOTED_URL = re.compile(
    r"\s*(?:((?:[^\s\"'()\\]|\\[0-9A-Fa-f]{1,6}[ \t\n\r\f]?|\\[^\n\r\f])+)\s*)?\)"
)


def scan_css(text: str) -> list[Reference]:
    """The references of a stylesheet, in source order."""
    refs: list[Reference] = []
    pos = 0
    while True:
        event = _CSS_EVENT.search(text, pos)
        if event is None:
            return refs
        token = event.group().lower()
        pos = event.end()
        if token[0] == "\\":
            continue  # an escaped character
        if token == "/*":
            close = text.find("*/", pos)
            end = len(text) if close < 0 else close
            found = _SOURCE_MAP.match(text, pos, end)
            if found:
                refs.append(Reference(found.start(1), found.end(1), found.group(1)))
            pos = end + 2
        elif token in _CSS_STRINGS:
            pos = _CSS_STRINGS[token].match(text, event.start()).end()  # type: ignore[union-attr]
        elif token == "url(":
            pos = _css_url(text, pos, refs)
        elif token.endswith("image-set("):
            pos = _css_image_set(text, pos, refs)
        else:  # @import "x.css"; @import url(x.css) is found as a url( next time round
            pos = _CSS_SPACE.match(text, pos).end()  # type: ignore[union-attr]
            if text[pos : pos + 1] in _CSS_STRINGS:
                pos = _css_string(text, pos, refs)


def _css_string(text: str, pos: int, refs: list[Reference]) -> int:
    """Add the URL of the CSS string at *pos*; where it ends."""
    string = _CSS_STRINGS[text[pos]].match(text, pos)
    assert string is not None  # the pattern matches any opening quote
    if string.group(2):
        _css_reference(string, refs)
    return string.end()


def _css_reference(match: re.Match[str], refs: list[Reference]) -> None:
    """Add the URL in *match*'s first group, escapes decoded (when it can be written
    back in its place)."""
    value = match.group(1)
    if value and "\\" in value:
        value = _unescape_css(value)
    if value:
        refs.append(Reference(match.start(1), match.end(1), value))


def _css_image_set(text: str, pos: int, refs: list[Reference]) -> int:
    """The references of ``image-set(...)`` from *pos* (after its parenthesis): its
    strings and ``url()``s; where it ends."""
    depth = 0
    while True:
        event = _CSS_IMAGE_SET_EVENT.search(text, pos)
        if event is None:
            return len(text)
        token = event.group().lower()
        pos = event.end()
        if token[0] == "\\":
            continue  # an escaped character
        if token == "/*":
            close = text.find("*/", pos)
            pos = len(text) if close < 0 else close + 2
        elif token in _CSS_STRINGS:
            if depth:
                pos = _CSS_STRINGS[token].match(text, event.start()).end()  # type: ignore[union-attr]
            else:
                pos = _css_string(text, event.start(), refs)
        elif token == "url(":
            pos = _css_url(text, pos, refs)
        elif token == "(":
            depth += 1
        elif depth == 0:
            return pos
        else:
            depth -= 1


def _css_url(text: str, pos: int, refs: list[Reference]) -> int:
    """Parse the inside of ``url(`` at *pos*; return where scanning resumes."""
    inner = _CSS_SPACE.match(text, pos).end()  # type: ignore[union-attr]
    quote_char = text[inner : inner + 1]
    if quote_char in _CSS_STRINGS:
        string = _CSS_STRINGS[quote_char].match(text, inner)
        assert string is not None
        if string.group(2):
            _css_reference(string, refs)
        return string.end()
    unquoted = _CSS_UNQUOTED_URL.match(text, pos)
    if unquoted is None:  # a stray quote or no ")": not something we rewrite
        return pos
    _css_reference(unquoted, refs)
    return unquoted.end()


# -- JavaScript ------------------------------------------------------------------------------

# What changes the lexical state of a module, or may start a reference. Everything between
# two such events (names, numbers, operators, whitespace) is skipped by the regex engine,
# which keeps the Python loop to a fraction of the tokens.
_JS_EVENT = re.compile(
    r"""
      (?P<line>//[^\n\r\u2028\u2029]*)
    | (?P<block>/\*[\s\S]*?(?:\*/|\Z))
    | (?P<str>"(?:[^"\\\n\r]|\\[\s\S])*"?|'(?:[^'\\\n\r]|\\[\s\S])*'?)
    | (?P<tpl>`)
    | (?P<slash>/)
    | (?P<open>[({])
    | (?P<close>[)}])
    | (?P<word>(?<![\w$])(?:import|export|new)(?![\w$]))
    """,
    re.VERBOSE,
)
# Tokens, for reading the few tokens of an import or export clause.
_JS_TOKEN = re.compile(
    r"""
      (?P<skip>(?:\s|\ufeff|//[^\n\r\u2028\u2029]*|/\*[\s\S]*?(?:\*/|\Z))+)
    | (?P<str>"(?:[^"\\\n\r]|\\[\s\S])*"?|'(?:[^'\\\n\r]|\\[\s\S])*'?)
    | (?P<tpl>`)
    | (?P<name>(?:[^\W\d]|[$\\])(?:[\w$\\])*)
    | (?P<num>\.?\d[\w.]*)
    | (?P<punct>\?\.|\.\.\.|=>|\+\+|--|[\s\S])
    """,
    re.VERBOSE,
)
# The text of a template literal up to its end (`) or its next substitution (${).
_TPL_CHUNK = re.compile(r"(?:[^`\\$]|\\[\s\S]|\$(?!\{))*")
# A regular expression literal; it cannot span lines, which bounds a wrong guess.
_REGEX = re.compile(r"/(?![*/])(?:[^/\\\[\n\r]|\\.|\[(?:[^\]\\\n\r]|\\.)*\])+/[\w$]*")
# What changes the state of _REGEX's body outside and inside a [class] (_RegexLiterals).
_REGEX_NORMAL = re.compile(r"[/\[\\\r]")
_REGEX_CLASS = re.compile(r"[\]\\\r]")
_REGEX_FLAGS = re.compile(r"[\w$]*")
_SPACE = frozenset(" \t\n\r\v\f\ufeff\xa0\u2028\u2029")

# After these words an expression starts, so a "/" opens a regular expression. "of" is a
# keyword only in "for (x of y)"; elsewhere it is a name (minifiers use it: "of/2").
_KEYWORDS_BEFORE_EXPRESSION = frozenset(
    ("return", "typeof", "instanceof", "in", "of", "new", "delete", "void", "throw", "case",
     "do", "else", "yield", "await", "extends", "default")
)  # fmt: skip
# "if (x) /re/.test(y)": after the parenthesis of these a statement starts.
_KEYWORDS_BEFORE_PAREN_STATEMENT = frozenset(("if", "while", "for", "with"))

# Token kinds. A template literal without substitutions is "tpl0" (usable as a specifier in
# import(`./x.js`)); one with substitutions is "tpl" and never a reference.
_NAME, _STR, _TPL0, _TPL, _PUNCT = ("name", "str", "tpl0", "tpl", "punct")

_Token = tuple[str, int, int]


def scan_js(text: str) -> list[Reference]:
    """The references of a JavaScript module, in source order."""
    if "import" not in text and "export" not in text and "sourceMappingURL" not in text:
        return []
    refs: list[Reference] = []
    # For each open "{": True when it is a template substitution "${".
    braces: list[bool] = []
    # For each open "(": the word before it (if/while/for/with start a statement after it).
    parens: list[str] = []
    last_paren_statement = False
    # Where each block comment seen so far starts, by where it ends: what precedes a
    # comment is found without searching back through the text.
    comments: dict[int, int] = {}
    pos = 0
    if text.startswith("#!"):  # a hashbang line is a comment
        newline = text.find("\n")
        pos = len(text) if newline < 0 else newline
    search = _JS_EVENT.search
    regexes = _RegexLiterals(text)
    clauses = _Clauses(text)
    while True:
        event = search(text, pos)
        if event is None:
            return refs
        kind = event.lastgroup
        start, pos = event.span()
        if kind == "line" or kind == "block":
            if kind == "block":
                comments[pos] = start
            found = _SOURCE_MAP.match(text, start + 2, pos)
            if found:
                refs.append(Reference(found.start(1), found.end(1), found.group(1)))
        elif kind == "tpl":
            pos, closed = _template_chunk(text, pos)
            if not closed:
                braces.append(True)
        elif kind == "slash":
            in_for = bool(parens) and parens[-1] in ("for", "await")  # for await (x of y)
            if _regex_allowed(text, start, last_paren_statement, comments, in_for):
                pos = regexes.end(start, pos)
        elif kind == "open":
            if text[start] == "{":
                braces.append(False)
            else:
                parens.append(_word_before(text, start))
        elif kind == "close":
            if text[start] == ")":
                word = parens.pop() if parens else ""
                last_paren_statement = word in _KEYWORDS_BEFORE_PAREN_STATEMENT
            elif braces and braces.pop():
                # The end of a template substitution: the template text resumes.
                pos, closed = _template_chunk(text, pos)
                if not closed:
                    braces.append(True)
        elif kind == "word":
            before = _before(text, start)
            while before + 1 in comments:  # obj./* c */import(...)
                before = _before(text, comments[before + 1])
            if before >= 0 and text[before] in ".#":
                continue  # obj.import(...), obj?.import(...), a.new, this.#import(...)
            ref = _module_reference(text, start, event.group(), clauses)
            if ref is not None:
                refs.append(ref)
        # "str": nothing inside a string is a reference


def _template_chunk(text: str, pos: int) -> tuple[int, bool]:
    """Scan template text from *pos*: (where it stops, True when at the closing backtick)."""
    end = _TPL_CHUNK.match(text, pos).end()  # type: ignore[union-attr]
    if text.startswith("`", end):
        return end + 1, True
    if text.startswith("${", end):
        return end + 2, False
    return end, True  # unterminated at the end of the file


def _before(text: str, pos: int) -> int:
    """The index of the last non-space character before *pos* (-1 when none)."""
    pos -= 1
    while pos >= 0 and text[pos] in _SPACE:
        pos -= 1
    return pos


def _word_before(text: str, pos: int) -> str:
    """The identifier or keyword that ends right before *pos* (spaces skipped), or ``""``."""
    end = _before(text, pos) + 1
    start = end
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] in "_$"):
        start -= 1
    return text[start:end]


def _regex_allowed(
    text: str, pos: int, after_paren_statement: bool, comments: Mapping[int, int], in_for: bool
) -> bool:
    """Whether the "/" at *pos* starts a regular expression rather than a division.

    The classic heuristic on what precedes it; a wrong guess for "regex" falls back to a
    division when no literal closes on the same line. *comments*: the block comments
    seen so far, by where they end; *in_for*: inside the parentheses of a ``for``.
    """
    index = _before(text, pos)
    while index + 1 in comments:
        # What precedes a block comment decides: "x = y /* c */ / 2" divides.
        pos = comments[index + 1]
        index = _before(text, pos)
    if index < 0:
        return True
    char = text[index]
    if char == ")":
        return after_paren_statement
    if char in "]\"'`":
        return False  # after a value
    if char == "/":
        return False  # after a regex literal
    if char in "+-":
        return not text.startswith(char * 2, index - 1)  # i++ / 2
    if char.isalnum() or char in "_$":
        word = _word_before(text, pos)
        if word not in _KEYWORDS_BEFORE_EXPRESSION or (word == "of" and not in_for):
            return False
        previous = _before(text, index + 1 - len(word))
        return previous < 0 or text[previous] != "."  # "a.return / 2" is a property
    return True  # after an operator, "(", ",", "{", "}", ";", ...


class _RegexLiterals:
    """Where the regular expression literal opened by a "/" ends, for one scan.

    ``_REGEX`` reads to the end of the line when no literal closes there, so trying it at
    every "/" of a long line ("/[(/[(/[(...") would be quadratic. After the first failure
    on a line, the rest of that line is read by the same automaton written out (outside
    or inside a [class], escapes, a "/" that closes), whose outcome is memoised at each
    character that can change its state: every such character is settled once per state,
    so all the attempts on the line together cost about its length.
    """

    __slots__ = ("_klass", "_line_end", "_memo", "_normal", "_text")

    def __init__(self, text: str) -> None:
        self._text = text
        self._line_end = -1  # the end of the line read by the automaton (-1: none yet)
        self._normal: list[int] = []  # where "/", "[", "\\", "\r" sit on that line
        self._klass: list[int] = []  # where "]", "\\", "\r" sit on that line
        # (in a class, position of one of those) -> the closing "/", or -1: no literal.
        self._memo: dict[tuple[bool, int], int] = {}

    def end(self, start: int, default: int) -> int:
        """Where scanning resumes after the "/" at *start*: past the literal or *default*."""
        text = self._text
        if start >= self._line_end:
            regex = _REGEX.match(text, start)
            if regex is not None:
                return regex.end()
            self._read_line(start)
            return default
        if text.startswith(("*", "/"), start + 1):
            return default  # a comment, or "//" (an empty literal does not exist)
        close = self._walk(start + 1)
        if close < 0:
            return default
        return _REGEX_FLAGS.match(text, close + 1).end()  # type: ignore[union-attr]

    def _read_line(self, start: int) -> None:
        text = self._text
        line_end = text.find("\n", start)
        self._line_end = len(text) if line_end < 0 else line_end
        self._normal = [m.start() for m in _REGEX_NORMAL.finditer(text, start, self._line_end)]
        self._klass = [m.start() for m in _REGEX_CLASS.finditer(text, start, self._line_end)]
        self._memo = {}

    def _walk(self, pos: int) -> int:
        """The closing "/" of a literal whose body starts at *pos*, or -1."""
        text, memo, klass = self._text, self._memo, False
        path: list[tuple[bool, int]] = []
        while True:
            specials = self._klass if klass else self._normal
            index = bisect_left(specials, pos)
            if index == len(specials):
                result = -1  # the end of the line
                break
            at = specials[index]
            key = (klass, at)
            known = memo.get(key)
            if known is not None:
                result = known
                break
            path.append(key)
            char = text[at]
            if char == "\\":
                if at + 1 >= self._line_end:
                    result = -1  # an escaped line break
                    break
                pos = at + 2
            elif char == "/":
                result = at
                break
            elif char == "\r":
                result = -1
                break
            else:  # "[" opens a class, "]" closes it
                klass = char == "["
                pos = at + 1
        for key in path:
            memo[key] = result
        return result


def _tokens(text: str, pos: int) -> Iterator[_Token]:
    """The significant tokens from *pos*; stops at a template literal with substitutions."""
    length = len(text)
    match = _JS_TOKEN.match
    while pos < length:
        token = match(text, pos)
        assert token is not None  # the last alternative matches any character
        kind = token.lastgroup
        start, pos = token.span()
        if kind == "skip":
            continue
        if kind == "tpl":
            pos, closed = _template_chunk(text, pos)
            if not closed:
                yield _TPL, start, pos
                return
            yield _TPL0, start, pos
        elif kind == "name" or kind == "str":
            yield kind, start, pos
        else:
            yield _PUNCT, start, pos


def _string_reference(text: str, token: _Token | None, kind: str) -> Reference | None:
    """A reference to the content of a plain string or substitution-free template."""
    if token is None:
        return None
    token_kind, start, end = token
    if token_kind not in (_STR, _TPL0) or end - start < 2 or text[end - 1] != text[start]:
        return None
    value = text[start + 1 : end - 1]
    if "\\" in value:
        value = _unescape_js(value) or ""
    if not value:
        return None
    return Reference(start + 1, end - 1, value, kind)


# Escapes of a JavaScript string (ECMA-262 §12.9.4): \xHH, \uHHHH, \u{H...}, a line
# continuation, a character escape; the empty branch catches a malformed \x or \u, or a
# digit (\0 is NUL, octal escapes are not allowed in modules).
_JS_ESCAPE = re.compile(
    r"\\(?:x([0-9A-Fa-f]{2})|u([0-9A-Fa-f]{4})|u\{([0-9A-Fa-f]{1,6})\}"
    r"|(\r\n|[\n\r\u2028\u2029])|([^xu0-9\n\r\u2028\u2029])|)"
)
_JS_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v"}
# Escapes of CSS (CSS Syntax §4.3.7): up to 6 hex digits and one optional space, a line
# continuation (in a string), any other character for itself.
_CSS_ESCAPE = re.compile(r"\\(?:([0-9A-Fa-f]{1,6})(?:\r\n|[ \t\n\r\f])?|(\r\n|[\n\r\f])|([\s\S]))")


def _unescape_js(value: str) -> str | None:
    """The value of a string's escaped text (``./\\u0061.js`` -> ``./a.js``), or ``None``
    when it is malformed or cannot be written back between quotes as it is."""
    out: list[str] = []
    pos = 0
    for match in _JS_ESCAPE.finditer(value):
        out.append(value[pos : match.start()])
        code = match.group(1) or match.group(2) or match.group(3)
        if code is not None:
            if int(code, 16) > 0x10FFFF:
                return None
            out.append(chr(int(code, 16)))
        elif match.group(5) is not None:
            out.append(_JS_SIMPLE_ESCAPES.get(match.group(5), match.group(5)))
        elif match.group(4) is None:
            return None  # malformed
        pos = match.end()
    out.append(value[pos:])
    try:  # a character outside the BMP written as two \\u escapes (a surrogate pair)
        decoded = "".join(out).encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        return None  # a lone surrogate: no file name
    return decoded if _writable(decoded) else None


def _unescape_css(value: str) -> str | None:
    """The value of CSS text with escapes (``img/c\\.png`` -> ``img/c.png``), or ``None``
    when it cannot be written back in its place as it is."""
    out: list[str] = []
    pos = 0
    for match in _CSS_ESCAPE.finditer(value):
        out.append(value[pos : match.start()])
        if match.group(1) is not None:
            code = int(match.group(1), 16)
            valid = 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF
            out.append(chr(code) if valid else "\ufffd")
        elif match.group(3) is not None:
            out.append(match.group(3))
        pos = match.end()
    out.append(value[pos:])
    decoded = "".join(out)
    return decoded if _writable(decoded) else None


def _writable(url: str) -> bool:
    """Whether *url* can replace escaped text in its place as it is (between quotes, or
    in an unquoted ``url()``): no quote, backslash, space, parenthesis or control."""
    return not any(char in "\"'`\\()" or char <= " " or char == "\x7f" for char in url)


def _is(text: str, token: _Token | None, kind: str, value: str | None = None) -> bool:
    if token is None or token[0] != kind:
        return False
    return value is None or text[token[1] : token[2]] == value


def _module_reference(text: str, start: int, word: str, clauses: _Clauses) -> Reference | None:
    """The reference made by the ``import``/``export``/``new`` at *start*, if any."""
    tokens = _tokens(text, start + len(word))
    if word == "new":
        # new URL("./x.png", import.meta.url)
        head = list(islice(tokens, 10))
        head += [None] * (10 - len(head))  # type: ignore[list-item]
        if (
            _is(text, head[0], _NAME, "URL")
            and _is(text, head[1], _PUNCT, "(")
            and _is(text, head[3], _PUNCT, ",")
            and _is(text, head[4], _NAME, "import")
            and _is(text, head[5], _PUNCT, ".")
            and _is(text, head[6], _NAME, "meta")
            and _is(text, head[7], _PUNCT, ".")
            and _is(text, head[8], _NAME, "url")
            and (_is(text, head[9], _PUNCT, ")") or _is(text, head[9], _PUNCT, ","))
        ):
            return _string_reference(text, head[2], URL)
        return None
    first = next(tokens, None)
    if word == "import":
        if _is(text, first, _STR):
            return _string_reference(text, first, MODULE)  # import "./x.js"
        if _is(text, first, _PUNCT, "("):
            # import("./x.js") or import("./x.json", { with: ... }); not import(a + "x")
            argument, after = next(tokens, None), next(tokens, None)
            if _is(text, after, _PUNCT, ")") or _is(text, after, _PUNCT, ","):
                return _string_reference(text, argument, MODULE)
            return None
        if not (
            _is(text, first, _NAME)
            or _is(text, first, _PUNCT, "*")
            or _is(text, first, _PUNCT, "{")
        ):
            return None  # import.meta, a property named import, ...
    elif not (_is(text, first, _PUNCT, "*") or _is(text, first, _PUNCT, "{")):
        return None  # export const, export default, ...: no module specifier
    assert first is not None
    return clauses.reference(first)


# An import or export clause is short; bounding the walk keeps a stray keyword cheap.
_MAX_CLAUSE_TOKENS = 2000


def _from_clause(text: str, tokens: Iterator[_Token]) -> Reference | None:
    """The specifier of the ``... from "x"`` that ends the clause *tokens* start.

    The definition, token by token; :class:`_Clauses` gives the same answers without
    walking each clause again (the tests hold them to it).
    """
    depth = 0
    pending: _Token | None = None
    for _ in range(_MAX_CLAUSE_TOKENS):
        token = pending or next(tokens, None)
        pending = None
        if token is None:
            return None
        kind, start, end = token
        if kind == _NAME:
            if depth == 0 and text[start:end] == "from":
                following = next(tokens, None)
                if _is(text, following, _STR):
                    return _string_reference(text, following, MODULE)
                pending = following  # "import from from 'x'": the binding is named from
        elif kind == _PUNCT:
            value = text[start:end]
            if value == "{":
                depth += 1
            elif value == "}":
                depth -= 1
                if depth < 0:
                    return None
            elif value not in (",", "*"):
                return None
        elif not (kind == _STR and depth > 0):  # import { "string name" as x } from "y"
            return None
    return None


class _Clauses:
    """The ``from "x"`` that ends each import or export clause of one scan.

    Walking each clause token by token (:func:`_from_clause`) costs up to
    ``_MAX_CLAUSE_TOKENS`` tokens per keyword: "import{import{import{..." would walk 2000
    tokens for each. A clause can only go on through names, strings, "{", "}", "," and
    "*", so one pass over such a run of tokens (a region) answers for all the clauses
    starting in it: a clause ends at the first token at its own brace depth that is a "}"
    (one too many), a string, or a ``from`` followed by a string (the answer); otherwise
    at the end of the region, which is where anything else stops it.
    """

    __slots__ = ("_ends", "_index", "_text", "_tokens")

    def __init__(self, text: str) -> None:
        self._text = text
        self._tokens: list[_Token] = []  # the current region
        self._index: dict[int, int] = {}  # token start -> its index in the region
        self._ends: list[int] = []  # for a clause starting at each index: where it ends

    def reference(self, first: _Token) -> Reference | None:
        """The reference made by the clause whose first token is *first*, if any."""
        index = self._index.get(first[1])
        if index is None or self._tokens[index] != first:
            self._read_region(first[1])
            index = 0
            if not self._tokens:
                return None  # *first* itself ends the clause
        end = self._ends[index]
        if end - index >= _MAX_CLAUSE_TOKENS or end == len(self._tokens):
            return None
        if self._tokens[end][0] != _NAME:
            return None  # a "}" or a string at the clause's own depth
        return _string_reference(self._text, self._tokens[end + 1], MODULE)

    def _read_region(self, start: int) -> None:
        text = self._text
        tokens: list[_Token] = []
        depths: list[int] = []  # the brace depth before each token
        depth = 0
        for token in _tokens(text, start):
            kind, begin, end = token
            if kind == _PUNCT:
                value = text[begin:end]
                if value not in ("{", "}", ",", "*"):
                    break
            elif kind != _NAME and kind != _STR:
                break  # a template literal
            tokens.append(token)
            depths.append(depth)
            if kind == _PUNCT:
                depth += 1 if value == "{" else -1 if value == "}" else 0
        count = len(tokens)
        ends = [count] * count
        nearest: dict[int, int] = {}  # depth -> the nearest deciding token after
        for index in range(count - 1, -1, -1):
            kind, begin, end = tokens[index]
            if (
                kind == _STR
                or (kind == _PUNCT and text[begin] == "}")
                or (
                    kind == _NAME
                    and text[begin:end] == "from"
                    and index + 1 < count
                    and tokens[index + 1][0] == _STR
                )
            ):
                nearest[depths[index]] = index
            ends[index] = nearest.get(depths[index], count)
        self._tokens, self._ends = tokens, ends
        self._index = {token[1]: index for index, token in enumerate(tokens)}


# -- URLs ------------------------------------------------------------------------------------


def split_url(url: str) -> tuple[str, str]:
    """``"a/b.png?v=1#x"`` -> ``("a/b.png", "?v=1#x")``."""
    cut = len(url)
    for mark in "?#":
        found = url.find(mark)
        if 0 <= found < cut:
            cut = found
    return url[:cut], url[cut:]


def resolve(ref: Reference, referrer: str, static_url: str) -> str | None:
    """The logical path *ref* (found in the file at logical path *referrer*) points at.

    ``None`` for references outside the deployment's reach: absolute URLs, bare module
    specifiers, rooted paths outside the static prefix, folder URLs. A relative path that
    climbs above the source folder resolves to a path starting with ``../`` (which no
    asset has, so the caller reports it as missing).
    """
    url = ref.url.strip()
    path, _ = split_url(url)
    if not path or path.endswith("/") or path.rpartition("/")[2] in (".", ".."):
        return None  # a folder
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered:
        return None  # an encoded separator: one segment to a browser, served by no server
    if static_url.startswith(("http://", "https://", "//")):
        if url.startswith(static_url):
            return _normalize(unquote(path[len(static_url) :]))
        if _EXTERNAL.match(url) or url.startswith("/"):
            return None
    else:
        if _EXTERNAL.match(url):
            return None
        if url.startswith("/"):
            if not path.startswith(static_url):
                return None
            return _normalize(unquote(path[len(static_url) :]))
    if ref.kind == MODULE and not path.startswith(("./", "../")):
        return None  # "react", "lodash/fp.js": resolved by an import map, not by us
    folder = posixpath.dirname(referrer)
    return _normalize(posixpath.join(folder, unquote(path)))


def _normalize(path: str) -> str | None:
    if not path:
        return None
    normal = posixpath.normpath(path)
    return None if normal in (".", "") else normal


def retarget(url: str, new_name: str) -> str:
    """*url* pointing at the same folder's *new_name* instead, in the same form.

    Only the last path segment changes (hashed names stay in their folder), so a relative
    URL stays relative, a rooted one rooted, and the query and fragment are kept.
    """
    path, suffix = split_url(url)
    head, _, _ = path.rpartition("/")
    base = new_name.rpartition("/")[2]
    return (f"{head}/" if "/" in path else "") + url_path(base) + suffix


def apply(text: str, refs: Iterable[Reference], replace: Callable[[Reference], str | None]) -> str:
    """*text* with each reference's URL replaced by ``replace(ref)`` (``None``: unchanged)."""
    parts: list[str] = []
    pos = 0
    for ref in refs:
        new = replace(ref)
        if new is None or new == ref.url:
            continue
        parts.append(text[pos : ref.start])
        parts.append(new)
        pos = ref.end
    if not parts:
        return text
    parts.append(text[pos:])
    return "".join(parts)
