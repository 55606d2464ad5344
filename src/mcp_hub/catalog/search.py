"""Ranked search over a catalog of tools, and its toolsets, for the compact catalog's meta-tools.

The index is tantivy's, in memory (no files, no network): one document per tool with the fields
below, each analysed by one English analyzer (words, lowercase, English stop words removed,
Snowball stemming, so "forking" finds "fork"). A query is never parsed with a query language: its
words go through the same analyzer and become plain term queries, so quotes, colons, AND/OR, field
names or a 10 kB paste are only words and can never raise.

Fields and weights (a match in a heavier field counts more; BM25 within each field):

    name      2.0  the exposed name split into words (`repos_create-fork`, `GetCustomersCustomer`)
    summary   2.0  the first sentence of the description (usually the operation's summary)
    tags      1.0  OpenAPI tags (or the server's grouping), split into words
    body      0.8  the whole description, markup removed
    path      0.75 the HTTP method and path template of an OpenAPI operation, without {params}
    params    0.7  parameter names and their descriptions

Each query word is scored in every field and the per-field scores are combined with a
disjunction-max (the best field counts fully, the others with a 0.2 tie-breaker), so a word that
happens to appear in many fields of one tool does not drown a word that names the tool.

A short list of abbreviations and everyday verbs common to API catalogs (`repo` <-> repository,
`remove` -> delete, `fetch` -> get, ...) adds the catalog's own word alongside the one typed, with
the same weight (`SYNONYMS`). It is about how APIs name CRUD operations in general, not about one
document. English function words (`STOP_WORDS`) are dropped from queries and documents alike.

The weights were chosen by a small grid search on half of bench/catalog_queries.yaml and checked
on the other half (bench/catalog_tokens.py prints both).
"""

from __future__ import annotations

import html
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import mcp.types
import tantivy

# -- documents --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolDoc:
    """What the index knows of one tool."""

    name: str  # the exposed name, e.g. "github__repos_create-fork"
    description: str
    toolset: str  # e.g. "github" or "github/repos": the upstream, then the tag or server grouping
    params: tuple[tuple[str, str], ...] = ()  # (name, description) of the input's top-level properties
    tags: tuple[str, ...] = ()
    path: str = ""  # e.g. "POST /repos/{owner}/{repo}/forks" for an OpenAPI operation


@dataclass(frozen=True)
class SearchHit:
    """One ranked result: the exposed name, a one-line description and the score (higher is better)."""

    name: str
    summary: str
    score: float


@dataclass(frozen=True)
class Toolset:
    """One group of tools: its name, one line about it and how many tools it has."""

    name: str
    summary: str
    count: int


_VERSION_SEGMENT = re.compile(r"^(v\d+(\.\d+)*|api|rest)$", re.IGNORECASE)


def _path_group(path: str) -> str:
    """The first literal path segment that is not a version: `/v1/charges/{id}` -> `charges`."""
    template = path.split(" ", 1)[-1]
    for segment in template.split("/"):
        if not segment or "{" in segment or _VERSION_SEGMENT.match(segment):
            continue
        return segment.split(".", 1)[0]
    return ""


def tool_doc(tool: mcp.types.Tool, *, upstream: str, tags: Sequence[str] = (), path: str = "") -> ToolDoc:
    """A `ToolDoc` for an exposed tool of `upstream`.

    The toolset is `upstream/<first tag>`, else `upstream/<first path segment>` for an operation
    without tags (`/v1/charges/...` -> `charges`), else `upstream`. The tool's title is kept in
    front of the description when the description does not already start with it.
    """
    description = tool.description or ""
    title = (tool.title or "").strip()
    if title and not description.lstrip().startswith(title):
        description = f"{title}\n\n{description}" if description else title
    params: list[tuple[str, str]] = []
    schema = tool.input_schema if isinstance(tool.input_schema, dict) else {}
    properties = schema.get("properties")
    if isinstance(properties, dict):
        for key, prop in properties.items():
            text = prop.get("description") if isinstance(prop, dict) else None
            params.append((str(key), text if isinstance(text, str) else ""))
    tags = tuple(t for t in tags if isinstance(t, str) and t.strip())
    group = tags[0].strip() if tags else _path_group(path)
    toolset = f"{upstream}/{group}" if group else upstream
    return ToolDoc(name=tool.name, description=description, toolset=toolset, params=tuple(params),
                   tags=tags, path=path)


# -- text -------------------------------------------------------------------------------------

_TAG = re.compile(r"<[^>]{0,200}>")
_MD_LINK = re.compile(r"\[([^\]]{0,300})\]\([^)\s]{0,500}\)")
_URL = re.compile(r"https?://\S+")
_SPACE = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`\"'])")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[_\-./{}:]+")
_POSSESSIVE = re.compile(r"['’]s\b")


def plain_text(text: str | None) -> str:
    """`text` without HTML tags, entities, Markdown link targets or bare URLs."""
    if not text:
        return ""
    text = _TAG.sub(" ", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _URL.sub(" ", text)
    return html.unescape(text)


def one_line(text: str | None, max_chars: int = 120) -> str:
    """The first line, then its first sentence, of `text` (markup removed, whitespace folded),
    at most `max_chars` long: a longer line is cut at a word and ends with `…`."""
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    plain = plain_text(text)
    first = next((line.strip() for line in plain.splitlines() if line.strip()), "")
    first = _SPACE.sub(" ", first).replace("*", "").strip()
    first = _SENTENCE_END.split(first, maxsplit=1)[0]
    if len(first) <= max_chars:
        return first
    cut = first[: max_chars - 1]
    if " " in cut and not first[max_chars - 1].isspace():
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:-") + "…"


def split_words(text: str) -> str:
    """Identifiers made into words: `repos_create-fork` -> `repos create fork`,
    `GetCustomersCustomer` -> `Get Customers Customer`, `chat.postMessage` -> `chat post Message`."""
    return _CAMEL.sub(" ", _SEPARATORS.sub(" ", text))


# -- the index --------------------------------------------------------------------------------

FIELD_WEIGHTS: Mapping[str, float] = {
    "name": 2.0,
    "summary": 2.0,
    "tags": 1.0,
    "body": 0.8,
    "path": 0.75,
    "params": 0.7,
}
TIE_BREAKER = 0.2
SYNONYM_WEIGHT = 1.0
# Terms of one query beyond this many are ignored (a pasted document is still answered, quickly).
MAX_QUERY_TERMS = 64
_ANALYZER = "catalog_en"

# Abbreviations and everyday verbs -> the words API catalogs use for them (both directions are
# not implied: each key lists what to add when the key is typed).
SYNONYMS: Mapping[str, tuple[str, ...]] = {
    "repo": ("repository",),
    "repository": ("repo",),
    "pr": ("pull", "request"),
    "org": ("organization",),
    "organization": ("org",),
    "info": ("information", "get"),
    "config": ("configuration",),
    "remove": ("delete",),
    "erase": ("delete",),
    "drop": ("delete",),
    "delete": ("remove",),
    "fetch": ("get", "retrieve"),
    "show": ("get", "list"),
    "view": ("get",),
    "see": ("get", "list"),
    "read": ("get",),
    "look": ("get",),
    "retrieve": ("get",),
    "get": ("retrieve",),
    "make": ("create",),
    "new": ("create",),
    "add": ("create",),
    "start": ("create",),
    "create": ("add",),
    "change": ("update",),
    "edit": ("update",),
    "modify": ("update",),
    "rename": ("update",),
    "update": ("edit",),
    "all": ("list",),
    "every": ("list",),
    "find": ("search",),
    "lookup": ("search", "get"),
    "send": ("post",),
}


# English function words (pronouns, determiners, prepositions, conjunctions, auxiliaries, fillers):
# they carry no meaning for finding a tool, in a query or in a description.
STOP_WORDS: frozenset[str] = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most
my myself no nor not now of off on once only or other our ours ourselves out over own same she
should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom why will with
would you your yours yourself yourselves also please want need let lets i'm i'd can't don't via
something someone somebody anything thing things etc e.g i.e
""".split())


def _analyzer() -> tantivy.TextAnalyzer:
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(40))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.custom_stopword(sorted(STOP_WORDS)))
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def _prefixes(toolset: str) -> list[str]:
    """`github/repos` -> [`github`, `github/repos`]: a filter on either finds the tool."""
    parts = toolset.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _in_toolset(doc_toolset: str, wanted: str) -> bool:
    return doc_toolset == wanted or doc_toolset.startswith(wanted + "/")


class SearchIndex:
    """An in-memory full-text index of `docs`; build once per catalog version, query many times.

    `toolset_summaries` optionally gives a toolset's one-line description (e.g. an OpenAPI tag's
    description); toolsets without one are summed up by their most common name words.
    """

    def __init__(self, docs: Sequence[ToolDoc], *, toolset_summaries: Mapping[str, str] | None = None) -> None:
        self._docs: list[ToolDoc] = list(docs)
        self._summaries = [one_line(d.description) for d in self._docs]
        self._toolset_summaries = dict(toolset_summaries or {})
        self._analyzer = _analyzer()
        # SYNONYMS by stem, so plurals and other forms of a key find its words too.
        self._synonyms: dict[str, list[str]] = defaultdict(list)
        for key, extras in SYNONYMS.items():
            for stem in self._analyzer.analyze(key) or [key]:  # a stop word ("all") stays as typed
                for extra in extras:
                    self._synonyms[stem].extend(t for t in self._analyzer.analyze(extra) if t != stem)
        builder = tantivy.SchemaBuilder()
        builder.add_unsigned_field("ord", stored=True)
        for field in FIELD_WEIGHTS:
            builder.add_text_field(field, tokenizer_name=_ANALYZER, index_option="freq")
        builder.add_text_field("toolset", tokenizer_name="raw", index_option="basic")
        self._schema = builder.build()
        self._index = tantivy.Index(self._schema)
        self._index.register_tokenizer(_ANALYZER, self._analyzer)
        writer = self._index.writer(heap_size=50_000_000, num_threads=1)
        for ordinal, doc in enumerate(self._docs):
            fields: dict[str, Any] = {
                "ord": ordinal,
                "name": split_words(doc.name),
                "summary": self._summaries[ordinal],
                "tags": " ".join(split_words(t) for t in doc.tags),
                "path": split_words(re.sub(r"{[^}]*}", " ", doc.path)),
                "body": plain_text(doc.description),
                "params": " ".join(f"{split_words(n)} {plain_text(d)}" for n, d in doc.params),
                "toolset": _prefixes(doc.toolset),
            }
            writer.add_document(tantivy.Document(**fields))
        writer.commit()
        writer.wait_merging_threads()
        self._index.reload()
        self._searcher = self._index.searcher()

    def __len__(self) -> int:
        return len(self._docs)

    # -- querying -----------------------------------------------------------------------------

    def _terms(self, query: str) -> list[tuple[str, float]]:
        """The query's analysed terms with their weights (typed words 1.0, added synonyms lower)."""
        words = split_words(_POSSESSIVE.sub("", query[:20_000])).split()
        weights: dict[str, float] = {}
        for word in words:
            stems = self._analyzer.analyze(word)
            for term in stems:
                weights[term] = 1.0
            for key in stems or [word.lower()]:
                for extra in self._synonyms.get(key, ()):
                    weights.setdefault(extra, SYNONYM_WEIGHT)
            if len(weights) >= MAX_QUERY_TERMS:
                break
        return list(weights.items())[:MAX_QUERY_TERMS]

    def _query(self, terms: Iterable[tuple[str, float]]) -> tantivy.Query:
        per_term = []
        for term, weight in terms:
            fields = [
                tantivy.Query.boost_query(tantivy.Query.term_query(self._schema, field, term), boost * weight)
                for field, boost in FIELD_WEIGHTS.items()
            ]
            per_term.append((tantivy.Occur.Should, tantivy.Query.disjunction_max_query(fields, TIE_BREAKER)))
        return tantivy.Query.boolean_query(per_term)

    def search(self, query: str, *, limit: int = 10, toolset: str | None = None) -> list[SearchHit]:
        """The best `limit` tools for `query`, best first; within `toolset` (and its sub-toolsets)
        when given. A query with no searchable word returns nothing, or with `toolset` the first
        `limit` tools of that toolset by name (score 0)."""
        if limit <= 0 or not isinstance(query, str):
            return []
        terms = self._terms(query)
        if not terms:
            if toolset is None:
                return []
            found = sorted((d.name, i) for i, d in enumerate(self._docs) if _in_toolset(d.toolset, toolset))
            return [SearchHit(name, self._summaries[i], 0.0) for name, i in found[:limit]]
        text_query = self._query(terms)
        if toolset is not None:
            text_query = tantivy.Query.boolean_query([
                (tantivy.Occur.Must, text_query),
                (tantivy.Occur.Must, tantivy.Query.term_query(self._schema, "toolset", toolset)),
            ])
        result = self._searcher.search(text_query, limit=min(limit, len(self._docs) or 1), count=False)
        hits: list[SearchHit] = []
        for score, address in result.hits:
            ordinal = self._searcher.doc(address)["ord"][0]
            hits.append(SearchHit(self._docs[ordinal].name, self._summaries[ordinal], round(float(score), 4)))
        return hits

    # -- toolsets -----------------------------------------------------------------------------

    def toolsets(self) -> list[Toolset]:
        """Every toolset, sorted by name, with its one-line summary and its number of tools."""
        members: dict[str, list[int]] = defaultdict(list)
        for i, doc in enumerate(self._docs):
            members[doc.toolset].append(i)
        out = []
        for name in sorted(members):
            summary = one_line(self._toolset_summaries.get(name)) or self._summary_of(name, members[name])
            out.append(Toolset(name=name, summary=summary, count=len(members[name])))
        return out

    _GENERIC = frozenset({
        "get", "list", "create", "update", "delete", "set", "remove", "add", "for", "a", "an", "the", "of",
        "to", "in", "by", "and", "or", "with", "from", "on", "post", "put", "patch",
    })

    def _summary_of(self, toolset: str, ordinals: list[int]) -> str:
        """`N tools about w1, w2, w3, w4, w5`: the commonest words of the tools' names, without the
        toolset's own words and CRUD verbs."""
        own = {w.lower() for w in split_words(toolset.replace("/", " ")).split()}
        counts: Counter[str] = Counter()
        for i in ordinals:
            words = {w.lower() for w in split_words(self._docs[i].name).split()}
            counts.update(w for w in words if w not in own and w not in self._GENERIC and not w.isdigit())
        top = [w for w, _ in counts.most_common(5)]
        noun = "tool" if len(ordinals) == 1 else "tools"
        return f"{len(ordinals)} {noun}" + (f": {', '.join(top)}" if top else "")
