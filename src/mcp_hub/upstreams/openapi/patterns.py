"""Regular expressions of OpenAPI documents made into patterns Python's `re` compiles.

JSON Schema's `pattern` is meant to be ECMA-262, but documents are written in several dialects
(many generated from Java models: `\\p{Alnum}`, `\\A...\\z`, `[a&&[^b]]`), and the gateway, like
every Python client, checks patterns with `re` (jsonschema validates `pattern` with `re.search`
and checks `format: regex` with `re.compile`, so the `regex` package would not help: a schema
holding a pattern only it understands still fails `check_schema` everywhere else).

`python_pattern` keeps a pattern `re` already compiles as it is (the document's other patterns
are treated the same way), and otherwise translates the constructs that have an exact equivalent:

- Unicode properties `\\p{..}` / `\\P{..}` (general categories in short, long or `gc=` form, the
  Java POSIX classes such as `\\p{Alnum}` (ASCII, as Java defines them), `\\p{ASCII}`,
  `\\p{Any}`/`\\p{all}`, `\\p{Assigned}`, `White_Space`), as exact character sets computed from
  `unicodedata` and written compactly (`[\\p{L}\\p{N}_]` is Python's `\\w`);
- Java class intersections and nested classes (`[\\p{Print}&&[^:]]`), POSIX brackets (`[:alpha:]`);
- a `-` next to a class escape (`[\\w-.]`) as the literal hyphen ECMA-262 and Java make of it;
- ECMA-262's `[^]` (any character) and `[]` (nothing), `\\u{..}`, `\\cX`; Java/PCRE `\\x{..}`, `\\e`,
  `\\h`, `\\R`, `\\Q..\\E`, `\\A`, `\\z`;
- named groups `(?<name>..)` / `(?'name'..)` as plain groups, `\\k<name>` as numbered backreferences;
- inline flags in the middle (`a(?i)b`) as scoped groups `a(?i:b)`.

Anything else that `re` rejects (Unicode scripts and blocks: `unicodedata` has no script data;
`\\G`, `\\X`, conditionals, recursion, ...) cannot be translated faithfully and is reported with
the reason. Translated patterns avoid Python-only syntax where a portable spelling exists.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

MAX_CODE_POINT = 0x10FFFF
# A translation longer than this is not worth its tokens in a tool's schema: reported instead.
MAX_TRANSLATED = 1200

Intervals = tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class PatternResult:
    """A pattern as Python sees it: `pattern` is None when it had to be dropped (`reason` says why);
    `rules` names the translations applied (empty when the pattern was kept as written)."""

    pattern: str | None
    rules: tuple[str, ...] = ()
    reason: str | None = None

    @property
    def translated(self) -> bool:
        return self.pattern is not None and bool(self.rules)


class Untranslatable(Exception):
    """A construct with no exact equivalent in Python's `re`."""


# -- character sets as sorted, disjoint, inclusive intervals ---------------------------------


def normalize(ranges: Iterable[tuple[int, int]]) -> Intervals:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)


def union(*sets: Intervals) -> Intervals:
    return normalize(r for s in sets for r in s)


def complement(ranges: Intervals) -> Intervals:
    out = []
    start = 0
    for lo, hi in ranges:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= MAX_CODE_POINT:
        out.append((start, MAX_CODE_POINT))
    return tuple(out)


def intersect(a: Intervals, b: Intervals) -> Intervals:
    return complement(union(complement(a), complement(b)))


def subtract(a: Intervals, b: Intervals) -> Intervals:
    return intersect(a, complement(b))


def is_subset(a: Intervals, b: Intervals) -> bool:
    return not subtract(a, b)


def _chars(text: str) -> Intervals:
    return normalize((ord(c), ord(c)) for c in text)


ALL: Intervals = ((0, MAX_CODE_POINT),)
NOTHING: Intervals = ()

# Java's POSIX classes (US-ASCII only, as java.util.regex.Pattern defines them without UNICODE_CHARACTER_CLASS).
_LOWER = ((0x61, 0x7A),)
_UPPER = ((0x41, 0x5A),)
_DIGIT = ((0x30, 0x39),)
_ALPHA = union(_LOWER, _UPPER)
_ALNUM = union(_ALPHA, _DIGIT)
_PUNCT = _chars("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_GRAPH = union(_ALNUM, _PUNCT)
POSIX: dict[str, Intervals] = {
    "Lower": _LOWER, "Upper": _UPPER, "ASCII": ((0, 0x7F),), "Alpha": _ALPHA, "Digit": _DIGIT,
    "Alnum": _ALNUM, "Punct": _PUNCT, "Graph": _GRAPH, "Print": union(_GRAPH, _chars(" ")),
    "Blank": _chars(" \t"), "Cntrl": ((0, 0x1F), (0x7F, 0x7F)), "XDigit": union(_DIGIT, _chars("abcdefABCDEF")),
    "Space": _chars(" \t\n\x0b\f\r"),
}
# POSIX bracket expressions ([:alpha:]), ASCII as in PCRE without UCP.
BRACKETS: dict[str, Intervals] = {name.lower(): value for name, value in POSIX.items()}
BRACKETS["word"] = union(_ALNUM, _chars("_"))
# The Unicode White_Space property (PropList.txt; unicodedata does not carry it).
WHITE_SPACE = union(((0x09, 0x0D),), _chars(" \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"), ((0x2000, 0x200A),))
# Java's \h: horizontal whitespace.
HORIZONTAL = union(_chars(" \t\xa0\u1680\u180e\u202f\u205f\u3000"), ((0x2000, 0x200A),))

_GC_LONG = {
    "letter": "L", "casedletter": "LC", "uppercaseletter": "Lu", "lowercaseletter": "Ll", "titlecaseletter": "Lt",
    "modifierletter": "Lm", "otherletter": "Lo", "mark": "M", "combiningmark": "M", "nonspacingmark": "Mn",
    "spacingmark": "Mc", "enclosingmark": "Me", "number": "N", "decimalnumber": "Nd", "digit": "Nd",
    "letternumber": "Nl", "othernumber": "No", "punctuation": "P", "punct": "P", "connectorpunctuation": "Pc",
    "dashpunctuation": "Pd", "openpunctuation": "Ps", "closepunctuation": "Pe", "initialpunctuation": "Pi",
    "finalpunctuation": "Pf", "otherpunctuation": "Po", "symbol": "S", "mathsymbol": "Sm",
    "currencysymbol": "Sc", "modifiersymbol": "Sk", "othersymbol": "So", "separator": "Z",
    "spaceseparator": "Zs", "lineseparator": "Zl", "paragraphseparator": "Zp", "other": "C", "control": "Cc",
    "cntrl": "Cc", "format": "Cf", "surrogate": "Cs", "privateuse": "Co", "unassigned": "Cn",
}


@functools.cache
def _tables() -> tuple[dict[str, Intervals], Intervals, Intervals, Intervals]:
    """General categories, and the sets of Python's `\\w`, `\\d` and `\\s` (str patterns), from one
    pass over every code point (about half a second, once per process, only when needed)."""
    cats: dict[str, list[tuple[int, int]]] = {}
    word: list[tuple[int, int]] = []
    digit: list[tuple[int, int]] = []
    space: list[tuple[int, int]] = []

    def add(target: list[tuple[int, int]], cp: int) -> None:
        if target and target[-1][1] == cp - 1:
            target[-1] = (target[-1][0], cp)
        else:
            target.append((cp, cp))

    category = unicodedata.category
    for cp in range(MAX_CODE_POINT + 1):
        ch = chr(cp)
        add(cats.setdefault(category(ch), []), cp)
        if ch.isalnum() or ch == "_":  # sre: Py_UNICODE_ISALNUM or '_'
            add(word, cp)
        if ch.isdecimal():
            add(digit, cp)
        if ch.isspace():
            add(space, cp)
    table = {name: tuple(ranges) for name, ranges in cats.items()}
    for major in "LMNPSZC":
        table[major] = union(*(v for k, v in table.items() if len(k) == 2 and k[0] == major))
    table["LC"] = union(table.get("Lu", ()), table.get("Ll", ()), table.get("Lt", ()))
    return table, tuple(word), tuple(digit), tuple(space)


def shorthand(name: str) -> Intervals:
    """What `\\w`, `\\d`, `\\s` and their negations match in a Python str pattern."""
    _, word, digit, space = _tables()
    base = {"w": word, "d": digit, "s": space}[name.lower()]
    return complement(base) if name.isupper() else base


def property_set(name: str) -> Intervals:
    """The characters of `\\p{name}`; raises `Untranslatable` for names without exact data here."""
    if name in POSIX:
        return POSIX[name]
    key = re.sub(r"[\s_-]", "", name)
    lowered = key.lower()
    for prefix in ("generalcategory=", "gc=", "is"):
        if lowered.startswith(prefix) and len(lowered) > len(prefix):
            rest = key[len(prefix):]
            if prefix == "is" and rest in POSIX:
                return POSIX[rest]
            key, lowered = rest, rest.lower()
            break
    if lowered in ("any", "all"):
        return ALL
    if lowered == "ascii":
        return ((0, 0x7F),)
    if lowered in ("whitespace", "space") and name not in POSIX:
        return WHITE_SPACE
    table = _tables()[0]
    if lowered == "assigned":
        return complement(table.get("Cn", ()))
    code = _GC_LONG.get(lowered)
    if code is None and len(key) <= 2 and (key[:1].upper() + key[1:].lower()) in table | {"LC": ()}:
        code = key[:1].upper() + key[1:].lower()
    if code is None and lowered == "lc":
        code = "LC"
    if code is not None:
        return table.get(code, ())
    raise Untranslatable(
        f"\\p{{{name}}} is not a general category or POSIX class (Unicode scripts, blocks and derived "
        "properties need data Python's unicodedata does not have)"
    )


# -- writing sets ----------------------------------------------------------------------------

_CLASS_SPECIAL = set("\\]-[^")


def _char(cp: int) -> str:
    """One code point inside a class, spelled the same for Python and ECMA-262 (u mode)."""
    ch = chr(cp)
    if ch in _CLASS_SPECIAL:
        return "\\" + ch
    if 0x21 <= cp <= 0x7E or ch == " ":
        return ch
    if cp < 0x100:
        return f"\\x{cp:02x}"
    if cp <= 0xFFFF:
        return f"\\u{cp:04x}"
    return ch  # astral: the character itself (Python has no \u{...}, ECMA-262 no \U)


def _ranges_text(ranges: Intervals) -> str:
    parts = []
    for lo, hi in ranges:
        if lo == hi:
            parts.append(_char(lo))
        elif hi == lo + 1:
            parts.append(_char(lo) + _char(hi))
        else:
            parts.append(f"{_char(lo)}-{_char(hi)}")
    return "".join(parts)


def _body(target: Intervals) -> str:
    """Class contents for `target`: Python's shorthands where one fits wholly, ranges for the rest."""
    covered: Intervals = ()
    names = []
    for name in ("W", "S", "D", "w", "s", "d"):
        candidate = shorthand(name)
        if is_subset(candidate, target) and not is_subset(candidate, covered):
            names.append("\\" + name)
            covered = union(covered, candidate)
    return "".join(names) + _ranges_text(subtract(target, covered))


def class_text(target: Intervals) -> str:
    """The shortest class for exactly `target` (positive or negated)."""
    if target == ALL:
        return "[\\s\\S]"
    if not target:
        return "[^\\s\\S]"
    options = [f"[{_body(target)}]", f"[^{_body(complement(target))}]"]
    for name in ("w", "s", "d", "W", "S", "D"):
        # A shorthand but for a few characters: `(?![_])[\w|]` is [\p{L}\p{N}|].
        extra = subtract(shorthand(name), target)
        if extra and len(extra) <= 8 and not is_subset(shorthand(name), extra):
            options.append(f"(?:(?![{_ranges_text(extra)}])[{_body(union(target, shorthand(name)))}])")
    return min(options, key=_cost)


def _cost(text: str) -> int:
    """Characters on the wire: a schema travels as JSON (astral characters as two escapes)."""
    return len(json.dumps(text))


# -- the translator --------------------------------------------------------------------------

_HEX = re.compile(r"[0-9A-Fa-f]+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PROPERTY = re.compile(r"\{\s*\^?([A-Za-z0-9_ =.&-]+)\s*\}")


def _literal(cp: int) -> str:
    """One code point outside a class, portable."""
    ch = chr(cp)
    if ch in "\\^$.|?*+()[]{}/":
        return "\\" + ch
    return _char(cp) if not (0x21 <= cp <= 0x7E or ch == " ") else ch


class _Translator:
    """One pass over a pattern, writing its Python equivalent; raises `Untranslatable`."""

    def __init__(self, source: str) -> None:
        self.src = source
        self.pos = 0
        self.rules: set[str] = set()
        self.groups = 0
        self.names: dict[str, int] = {}

    # helpers
    def peek(self, k: int = 0) -> str:
        i = self.pos + k
        return self.src[i] if i < len(self.src) else ""

    def startswith(self, text: str) -> bool:
        return self.src.startswith(text, self.pos)

    def run(self) -> str:
        out = self.alternatives(top=True)
        if self.pos < len(self.src):
            raise Untranslatable(f"unbalanced ')' at position {self.pos}")
        return out

    def alternatives(self, *, top: bool = False) -> str:
        """Alternatives up to the closing `)` of the current group (not consumed) or the end."""
        alts: list[str] = []
        current: list[str] = []
        while self.pos < len(self.src):
            ch = self.peek()
            if ch == ")":
                if top:
                    raise Untranslatable(f"unbalanced ')' at position {self.pos}")
                break
            if ch == "|":
                self.pos += 1
                alts.append("".join(current))
                current = []
                continue
            at_start = top and self.pos == 0
            flags = self.inline_flags()
            if flags is not None:
                if at_start and flags and "-" not in flags:
                    current.append(f"(?{flags})")  # global flags at the very start: Python takes them
                    continue
                self.rules.add("inline flags made scoped")
                rest = self.alternatives_list()
                current.append(f"(?{flags}:{rest[0]})" if rest[0] else "")
                alts.append("".join(current))
                alts.extend(f"(?{flags}:{alt})" if alt else "" for alt in rest[1:])
                return "|".join(alts)
            current.append(self.atom())
        alts.append("".join(current))
        return "|".join(alts)

    def alternatives_list(self) -> list[str]:
        """Like `alternatives`, but returning each alternative on its own (flags nest inside)."""
        alts: list[str] = []
        current: list[str] = []
        while self.pos < len(self.src) and self.peek() != ")":
            if self.peek() == "|":
                self.pos += 1
                alts.append("".join(current))
                current = []
                continue
            flags = self.inline_flags()
            if flags is not None:
                rest = self.alternatives_list()
                current.append(f"(?{flags}:{rest[0]})" if rest[0] else "")
                alts.append("".join(current))
                alts.extend(f"(?{flags}:{alt})" if alt else "" for alt in rest[1:])
                return alts
            current.append(self.atom())
        alts.append("".join(current))
        return alts

    def inline_flags(self) -> str | None:
        """`(?ims-ims)` at the current position: consumed, returned in Python's spelling."""
        match = re.compile(r"\(\?([a-zA-Z]*)(?:-([a-zA-Z]*))?\)").match(self.src, self.pos)
        if not match or not (match.group(1) or match.group(2)):
            return None
        on, off = match.group(1), match.group(2) or ""
        for flag in on + off:
            if flag not in "imsu":
                raise Untranslatable(f"inline flag {flag!r} has no Python equivalent here")
        # `u` (Unicode case folding) is what Python's str patterns do anyway.
        on, off = on.replace("u", ""), off.replace("u", "")
        self.pos = match.end()
        return on + (f"-{off}" if off else "")  # "" when only `u`: a plain group

    def atom(self) -> str:
        ch = self.peek()
        if ch == "\\":
            return self.escape()
        if ch == "[":
            return self.char_class()
        if ch == "(":
            return self.group()
        self.pos += 1
        return ch

    def group(self) -> str:
        src = self.src
        self.pos += 1
        if self.startswith("?#"):
            end = src.find(")", self.pos)
            if end < 0:
                raise Untranslatable("unterminated comment group")
            self.pos = end + 1
            self.rules.add("comment removed")
            return ""
        named = re.compile(r"\?(?:P?<([A-Za-z_]\w*)>|'([A-Za-z_]\w*)')").match(src, self.pos)
        if named:
            self.groups += 1
            self.names[named.group(1) or named.group(2)] = self.groups
            self.pos = named.end()
            self.rules.add("named group made plain")
            head = "("
        elif self.startswith("?P="):
            match = _NAME.match(src, self.pos + 3)
            if not match or match.group(0) not in self.names or not src.startswith(")", match.end()):
                raise Untranslatable("backreference to an unknown group")
            self.pos = match.end() + 1
            return self.backref(self.names[match.group(0)])
        elif self.peek() == "?":
            for head in ("?:", "?=", "?!", "?<=", "?<!", "?>"):
                if self.startswith(head):
                    self.pos += len(head)
                    head = "(" + head
                    break
            else:
                scoped = re.compile(r"\?([a-zA-Z]*)(?:-([a-zA-Z]*))?:").match(src, self.pos)
                if not scoped:
                    raise Untranslatable(f"group construct '({src[self.pos:self.pos + 3]}' has no Python equivalent")
                on, off = scoped.group(1), scoped.group(2) or ""
                for flag in on + off:
                    if flag not in "imsu":
                        raise Untranslatable(f"inline flag {flag!r} has no Python equivalent here")
                on, off = on.replace("u", ""), off.replace("u", "")
                self.pos = scoped.end()
                head = f"(?{on}{'-' + off if off else ''}:" if (on or off) else "(?:"
        else:
            self.groups += 1
            head = "("
        body = self.alternatives()
        if self.peek() != ")":
            raise Untranslatable("missing ')'")
        self.pos += 1
        return head + body + ")"

    def backref(self, number: int) -> str:
        text = f"\\{number}"
        return f"(?:{text})" if self.peek().isdigit() else text

    # escapes ------------------------------------------------------------------------------

    def code_point_escape(self) -> int | None:
        """`\\x{..}`, `\\u{..}`, `\\cX`, `\\e` at the current position (after the backslash)."""
        src, ch = self.src, self.peek()
        if ch in "xu" and self.peek(1) == "{":
            end = src.find("}", self.pos)
            digits = src[self.pos + 2:end] if end > 0 else ""
            if not _HEX.fullmatch(digits) or int(digits, 16) > MAX_CODE_POINT:
                raise Untranslatable(f"bad code point escape \\{ch}{{{digits}")
            self.pos = end + 1
            self.rules.add(f"\\{ch}{{..}} escape")
            return int(digits, 16)
        if ch == "c" and self.peek(1).isascii() and self.peek(1).isalpha():
            cp = ord(self.peek(1)) % 32
            self.pos += 2
            self.rules.add("\\cX control escape")
            return cp
        if ch == "e":
            self.pos += 1
            self.rules.add("\\e escape")
            return 0x1B
        return None

    def property_escape(self) -> Intervals | None:
        """`\\p{..}`, `\\P{..}`, `\\pL` at the current position (after the backslash)."""
        ch = self.peek()
        if ch not in "pP":
            return None
        match = _PROPERTY.match(self.src, self.pos + 1)
        if match:
            name = match.group(1).strip()
            negate = (ch == "P") != ("{^" in self.src[self.pos:match.end()].replace(" ", ""))
            self.pos = match.end()
        elif self.peek(1).isalpha():
            name, negate = self.peek(1), ch == "P"
            self.pos += 2
        else:
            raise Untranslatable(f"\\{ch} is not followed by a property name in braces")
        found = property_set(name)
        self.rules.add("Unicode property class")
        return complement(found) if negate else found

    def escape(self) -> str:
        self.pos += 1
        ch = self.peek()
        if not ch:
            raise Untranslatable("pattern ends with a backslash")
        cp = self.code_point_escape()
        if cp is not None:
            return _literal(cp)
        found = self.property_escape()
        if found is not None:
            return class_text(found)
        self.pos += 1
        if ch == "z":
            self.rules.add("\\z end anchor")
            return "(?![\\s\\S])"
        if ch == "A":
            self.rules.add("\\A start anchor")
            return "(?<![\\s\\S])"
        if ch == "h" or ch == "H":
            self.rules.add("\\h horizontal space")
            return class_text(HORIZONTAL if ch == "h" else complement(HORIZONTAL))
        if ch == "R":
            self.rules.add("\\R line break")
            return "(?:\\r\\n|[\\n\\x0b\\f\\r\\x85\\u2028\\u2029])"
        if ch == "Q":
            end = self.src.find("\\E", self.pos)
            end = len(self.src) if end < 0 else end
            text = self.src[self.pos:end]
            self.pos = min(len(self.src), end + 2)
            self.rules.add("\\Q..\\E quoting")
            return "".join(_literal(ord(c)) for c in text)
        if ch == "E":
            self.rules.add("\\Q..\\E quoting")
            return ""
        if ch == "k":
            match = re.compile(r"<([A-Za-z_]\w*)>|'([A-Za-z_]\w*)'|\{([A-Za-z_]\w*)\}").match(self.src, self.pos)
            name = next((g for g in match.groups() if g), None) if match else None
            if match is None or name not in self.names:
                raise Untranslatable("named backreference to an unknown group")
            self.pos = match.end()
            self.rules.add("named backreference made numbered")
            return self.backref(self.names[name])
        if ch in "dDwWsSbBnrtfv0123456789" or not ch.isalnum():
            return "\\" + ch
        if ch in "xu":
            width = 2 if ch == "x" else 4
            digits = self.src[self.pos:self.pos + width]
            if len(digits) == width and _HEX.fullmatch(digits):
                self.pos += width
                return f"\\{ch}{digits}"
            raise Untranslatable(f"incomplete \\{ch} escape")
        if ch == "a":
            return "\\x07"
        if ch == "N" and self.peek() == "{":
            end = self.src.find("}", self.pos)
            try:
                cp = ord(unicodedata.lookup(self.src[self.pos + 1:end]))
            except KeyError:
                raise Untranslatable("unknown character name in \\N{..}") from None
            self.pos = end + 1
            return _literal(cp)
        raise Untranslatable(f"escape \\{ch} has no Python equivalent")

    # classes ------------------------------------------------------------------------------

    def char_class(self) -> str:
        src = self.src
        start = self.pos
        self.pos += 1
        negate = self.peek() == "^"
        if negate:
            self.pos += 1
        if self.peek() == "]" and "]" not in src[self.pos + 1:]:
            # ECMA-262: `[]` matches nothing and `[^]` any character (elsewhere `]` first is literal,
            # but then the class would never close).
            self.pos += 1
            self.rules.add("ECMA-262 empty class")
            return "[\\s\\S]" if negate else "[^\\s\\S]"
        java_sets = "&&" in src[start:]  # nested classes only mean something in Java's syntax
        target, textual, needs_sets = self.class_items(java_sets)
        if not needs_sets:
            return ("[^" if negate else "[") + "".join(textual) + "]"
        return class_text(complement(target) if negate else target)

    def class_items(self, java_sets: bool) -> tuple[Intervals, list[str], bool]:
        """Items up to and including the closing `]`: the set, a textual rendering, and whether
        only the set can say it (properties, intersections, nested classes)."""
        parts: list[Intervals] = []
        textual: list[str] = []
        needs_sets = False
        first = True
        intersect_with: list[Intervals] = []
        while True:
            ch = self.peek()
            if not ch:
                raise Untranslatable("unterminated character class")
            if ch == "]":
                self.pos += 1
                if not first:
                    break
                parts.append(_chars("]"))  # `]` first is a literal in Java, PCRE and Python
                textual.append("\\]")
                first = False
                continue
            first = False
            if java_sets and self.startswith("&&"):
                self.pos += 2
                needs_sets = True
                self.rules.add("Java class intersection")
                intersect_with.append(union(*parts))
                parts, textual = [], []
                continue
            if self.startswith("[:"):
                match = re.compile(r"\[:(\^?)([a-z]+):\]").match(self.src, self.pos)
                if match and match.group(2) in BRACKETS:
                    self.pos = match.end()
                    found = BRACKETS[match.group(2)]
                    parts.append(complement(found) if match.group(1) else found)
                    needs_sets = True
                    self.rules.add("POSIX bracket expression")
                    continue
            if ch == "[":
                self.pos += 1
                if java_sets:
                    negate = self.peek() == "^"
                    if negate:
                        self.pos += 1
                    inner, _, _ = self.class_items(java_sets)
                    parts.append(complement(inner) if negate else inner)
                    needs_sets = True
                    self.rules.add("Java nested class")
                    continue
                parts.append(_chars("["))
                textual.append("\\[")
                self.rules.add("'[' in a class escaped")
                continue
            item, text = self.class_atom()
            if isinstance(item, int):
                if self.peek() == "-" and self.peek(1) not in ("]", "") and not (java_sets and self.peek(1) == "["):
                    self.pos += 1
                    end, end_text = self.class_atom()
                    if isinstance(end, int):
                        if end < item:
                            raise Untranslatable("character range out of order")
                        parts.append(((item, end),))
                        textual.append(f"{text}-{end_text}")
                        continue
                    # `.-\w`: a class escape cannot end a range; the hyphen is a literal.
                    self.rules.add("literal '-' next to a class escape")
                    parts.extend([((item, item),), _chars("-"), end[0]])
                    textual.extend([text, "\\-", end[1] or ""])
                    needs_sets = needs_sets or end[1] is None
                    continue
                parts.append(((item, item),))
                textual.append(text)
                continue
            found, shorthand_text = item
            parts.append(found)
            if shorthand_text is None:
                needs_sets = True
            else:
                textual.append(shorthand_text)
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                # `\w-.`: a class escape cannot start a range; the hyphen is a literal.
                self.pos += 1
                self.rules.add("literal '-' next to a class escape")
                parts.append(_chars("-"))
                textual.append("\\-")
        target = union(*parts)
        for other in intersect_with:
            target = intersect(other, target)
        return target, textual, needs_sets

    def class_atom(self) -> tuple[int | tuple[Intervals, str | None], str]:
        """One class member: a code point (with its portable spelling), or a set with the shorthand
        text that says it (None when only the computed set can)."""
        ch = self.peek()
        if ch != "\\":
            self.pos += 1
            return ord(ch), _char(ord(ch))
        self.pos += 1
        ch = self.peek()
        if not ch:
            raise Untranslatable("pattern ends with a backslash")
        cp = self.code_point_escape()
        if cp is not None:
            return cp, _char(cp)
        found = self.property_escape()
        if found is not None:
            return (found, None), ""
        self.pos += 1
        if ch in "dDwWsS":
            return (shorthand(ch), "\\" + ch), "\\" + ch
        if ch in "hH":
            self.rules.add("\\h horizontal space")
            return (HORIZONTAL if ch == "h" else complement(HORIZONTAL), None), ""
        simple = {"n": 10, "r": 13, "t": 9, "f": 12, "v": 11, "b": 8, "a": 7, "0": 0}
        if ch in simple:
            return simple[ch], _char(simple[ch])
        if ch in "xu":
            width = 2 if ch == "x" else 4
            digits = self.src[self.pos:self.pos + width]
            if len(digits) == width and _HEX.fullmatch(digits):
                self.pos += width
                return int(digits, 16), _char(int(digits, 16))
            raise Untranslatable(f"incomplete \\{ch} escape")
        if ch == "Q":
            raise Untranslatable("\\Q..\\E quoting inside a class")
        if not ch.isalnum():
            return ord(ch), _char(ord(ch))
        raise Untranslatable(f"escape \\{ch} has no Python equivalent in a class")


def compiles(pattern: str) -> bool:
    """Whether Python's `re` compiles `pattern` without complaint (a FutureWarning counts as one:
    `[[` means something else in a future Python)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError, FutureWarning, DeprecationWarning):
            return False
    return True


@functools.lru_cache(maxsize=4096)
def python_pattern(source: str) -> PatternResult:
    """`source` as a pattern Python's `re` compiles with the same meaning, or why there is none."""
    if compiles(source):
        return PatternResult(source)
    translator = _Translator(source)
    try:
        out = translator.run()
    except Untranslatable as exc:
        return PatternResult(None, reason=str(exc))
    except RecursionError:
        return PatternResult(None, reason="nested too deeply")
    if not compiles(out):
        try:
            re.compile(out)
            problem = "Python warns that its meaning will change"
        except (re.error, RecursionError, OverflowError, FutureWarning, DeprecationWarning) as exc:
            problem = str(exc)
        return PatternResult(None, reason=f"no Python equivalent ({problem})")
    if len(out) > MAX_TRANSLATED:
        return PatternResult(None, reason=f"the exact Python equivalent is {len(out):,} characters long "
                                          f"(more than {MAX_TRANSLATED:,}: too costly in a tool's schema)")
    return PatternResult(out, tuple(sorted(translator.rules)) or ("rewritten",))
