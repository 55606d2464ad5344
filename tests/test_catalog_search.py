"""Catalog search: stemming, field weights, odd queries, toolset filters and toolsets (mcp_hub.catalog.search)."""

from __future__ import annotations

import mcp.types
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_hub.catalog.search import SearchIndex, ToolDoc, one_line, split_words, tool_doc
from mcp_hub.upstreams.openapi import convert_source
from tests.support.tools import ROOT

DOCS = [
    ToolDoc("github__repos_create-fork", "Create a fork for the authenticated user.", "github/repos",
            params=(("owner", "The account owner of the repository."), ("organization", "Optional organization name."))),
    ToolDoc("github__repos_list-forks", "List forks of a repository.", "github/repos"),
    ToolDoc("github__repos_get", "Get a repository. The response tells whether it is a fork.", "github/repos",
            tags=("repos",), path="GET /repos/{owner}/{repo}"),
    ToolDoc("github__issues_create", "Create an issue in a repository. Any user with pull access can create one.",
            "github/issues", tags=("issues",), path="POST /repos/{owner}/{repo}/issues"),
    ToolDoc("github__issues_lock", "Users with push access can lock an issue's conversation.", "github/issues"),
    ToolDoc("slack__chat_postMessage", "Sends a message to a channel.", "slack/chat",
            params=(("channel", "Channel, private group, or IM channel to send message to."),)),
    ToolDoc("slack__pins_add", "Pins an item to a channel.", "slack/pins"),
    ToolDoc("stripe__GetCustomersCustomer", "<p>Retrieves a Customer object.</p>", "stripe/customers",
            path="GET /v1/customers/{customer}"),
    ToolDoc("stripe__PostRefunds", "<p>When you create a new refund, you must specify a charge to create it on.</p>",
            "stripe/refunds"),
    ToolDoc("time__get_current_time", "Get current time in a specific timezones", "time"),
    ToolDoc("time__convert_time", "Convert time between timezones", "time"),
]


@pytest.fixture(scope="module")
def index() -> SearchIndex:
    return SearchIndex(DOCS)


def names(hits: list) -> list[str]:
    return [h.name for h in hits]


def test_stemming_finds_fork_tools_from_forking(index: SearchIndex) -> None:
    found = names(index.search("forking someone's project", limit=3))
    assert set(found[:2]) == {"github__repos_create-fork", "github__repos_list-forks"}
    assert names(index.search("forked", limit=1))[0] in {"github__repos_create-fork", "github__repos_list-forks"}


def test_a_name_match_outranks_a_passing_mention(index: SearchIndex) -> None:
    # "fork" is only mentioned in passing in repos_get's description; both fork tools name it.
    found = names(index.search("fork", limit=10))
    assert set(found[:2]) == {"github__repos_create-fork", "github__repos_list-forks"}
    assert found.index("github__repos_get") >= 2


def test_parameters_paths_and_tags_are_searched(index: SearchIndex) -> None:
    assert names(index.search("IM", limit=1)) == ["slack__chat_postMessage"]  # a parameter's description
    assert names(index.search("v1 customers", limit=1)) == ["stripe__GetCustomersCustomer"]  # the path


def test_markup_is_not_indexed_and_summaries_are_plain(index: SearchIndex) -> None:
    assert index.search("p", limit=5) == []
    hit = index.search("refund", limit=1)[0]
    assert hit.name == "stripe__PostRefunds"
    assert hit.summary == "When you create a new refund, you must specify a charge to create it on."
    assert hit.score > 0


def test_everyday_verbs_reach_the_catalog_words(index: SearchIndex) -> None:
    # "make" is in no document; its synonym "create" is, in names and descriptions.
    assert names(index.search("make an issue", limit=1)) == ["github__issues_create"]


def test_hits_are_ranked_and_limited(index: SearchIndex) -> None:
    hits = index.search("time", limit=2)
    assert len(hits) == 2
    assert hits[0].score >= hits[1].score
    assert set(names(hits)) == {"time__get_current_time", "time__convert_time"}
    assert index.search("time", limit=0) == []


ODD_QUERIES = [
    "", "   ", '"unbalanced', "title:fork", "fork AND OR NOT", "(((", "a:b:c", "+fork -issue", "*", "?",
    "name:[a TO z]", "fork~2", "\\", "\x00", "😀 東京 naïve", "'); DROP TABLE tools; --", "fork^10",
    "AND", "OR NOT", "IN [a b]", "x" * 10_000, "fork " * 2_000, "$ref #/$defs/x", "/regex.*/",
]


@pytest.mark.parametrize("query", ODD_QUERIES, ids=range(len(ODD_QUERIES)))
def test_odd_queries_never_raise(index: SearchIndex, query: str) -> None:
    hits = index.search(query, limit=5)
    assert isinstance(hits, list) and len(hits) <= 5
    assert all(h.name in {d.name for d in DOCS} for h in hits)


def test_query_syntax_is_plain_words(index: SearchIndex) -> None:
    # A field prefix is not a field: "title:fork" finds what "title fork" finds.
    assert names(index.search("title:fork")) == names(index.search("title fork"))
    assert names(index.search('"fork"')) == names(index.search("fork"))
    assert names(index.search("fork AND issue")) == names(index.search("fork and issue"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300))
def test_generated_queries_never_raise(index: SearchIndex, query: str) -> None:
    assert len(index.search(query, limit=3)) <= 3


def test_toolset_filter(index: SearchIndex) -> None:
    assert names(index.search("create", toolset="github/issues")) == ["github__issues_create"]
    within_github = names(index.search("create", toolset="github"))
    assert within_github and all(n.startswith("github__") for n in within_github)
    assert "github__repos_create-fork" in within_github
    assert index.search("create", toolset="githu") == []  # a prefix of a name is not a toolset
    assert index.search("create", toolset="nope") == []


def test_empty_query_with_a_toolset_lists_it(index: SearchIndex) -> None:
    hits = index.search("", toolset="time")
    assert names(hits) == ["time__convert_time", "time__get_current_time"]
    assert all(h.score == 0 for h in hits)
    assert index.search("") == []


def test_toolsets_sorted_with_counts_and_summaries() -> None:
    index = SearchIndex(DOCS, toolset_summaries={"github/issues": "Interact with GitHub Issues.\n\nMore."})
    sets = index.toolsets()
    assert [t.name for t in sets] == sorted({d.toolset for d in DOCS})
    counts = {t.name: t.count for t in sets}
    assert counts == {"github/issues": 2, "github/repos": 3, "slack/chat": 1, "slack/pins": 1,
                      "stripe/customers": 1, "stripe/refunds": 1, "time": 2}
    summaries = {t.name: t.summary for t in sets}
    assert summaries["github/issues"] == "Interact with GitHub Issues."
    assert summaries["github/repos"].startswith("3 tools: ")
    assert "fork" in summaries["github/repos"].lower()
    assert summaries["time"].startswith("2 tools: ") and "current" in summaries["time"]


def test_tool_doc_from_an_sdk_tool() -> None:
    tool = mcp.types.Tool(
        name="github__repos_create-fork", title="Create a fork", description="Forks a repository.",
        input_schema={"type": "object", "properties": {"owner": {"type": "string", "description": "The owner."},
                                                       "name": {"type": "string"}}},
    )
    doc = tool_doc(tool, upstream="github", tags=["repos", "forks"], path="POST /repos/{owner}/{repo}/forks")
    assert doc.toolset == "github/repos"
    assert doc.tags == ("repos", "forks")
    assert doc.params == (("owner", "The owner."), ("name", ""))
    assert doc.description == "Create a fork\n\nForks a repository."
    assert doc.path == "POST /repos/{owner}/{repo}/forks"
    # No tags: the first path segment that is not a version; no path either: the upstream.
    assert tool_doc(tool, upstream="stripe", path="GET /v1/charges/{charge}").toolset == "stripe/charges"
    assert tool_doc(tool, upstream="time").toolset == "time"
    plain = mcp.types.Tool(name="t", description="Create a fork here.", title="Create a fork",
                           input_schema={"type": "object"})
    assert tool_doc(plain, upstream="x").description == "Create a fork here."
    assert tool_doc(plain, upstream="x").params == ()


def test_one_line() -> None:
    assert one_line("Create a fork.\n\nLong details follow.") == "Create a fork."
    assert one_line("First sentence. Second sentence.") == "First sentence."
    assert one_line("<p>Retrieves a <code>Customer</code> &amp; more.</p>") == "Retrieves a Customer & more."
    assert one_line("  many   spaces\there ") == "many spaces here"
    assert one_line("See [the docs](https://example.com/x) for **more**") == "See the docs for more"
    assert one_line(None) == "" and one_line("") == ""
    cut = one_line("word " * 50, max_chars=23)
    assert cut == "word word word word…" and len(cut) <= 23
    assert one_line("x" * 50, max_chars=10) == "x" * 9 + "…"
    with pytest.raises(ValueError):
        one_line("x", max_chars=0)


def test_split_words() -> None:
    assert split_words("github__repos_create-fork").split() == ["github", "repos", "create", "fork"]
    assert split_words("GetCustomersCustomer").split() == ["Get", "Customers", "Customer"]
    assert split_words("admin.conversations.restrictAccess").split() == ["admin", "conversations", "restrict", "Access"]
    assert split_words("HTMLParser").split() == ["HTML", "Parser"]


def test_a_real_document_is_searchable() -> None:
    converted = convert_source(str(ROOT / "openapi_specs" / "slack.json"))
    docs = []
    for tool in converted.tools:
        binding = converted.bindings[tool.name]
        exposed = tool.model_copy(update={"name": f"slack__{tool.name}"})
        docs.append(tool_doc(exposed, upstream="slack", tags=binding.tags, path=f"{binding.method} {binding.path}"))
    index = SearchIndex(docs)
    assert len(index) == len(converted.tools) > 100
    assert "slack__chat_postMessage" in names(index.search("post a message in a channel", limit=5))
    assert "slack__reminders_add" in names(index.search("remind me tomorrow", limit=5))
    sets = {t.name: t.count for t in index.toolsets()}
    assert sets["slack/chat"] >= 5 and sum(sets.values()) == len(docs)
