"""ACL decisions: unit cases, the catalog filter cache, and properties over random configs."""

from __future__ import annotations

import fnmatch
import itertools

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_hub.auth.identity import Consumer
from mcp_hub.config.policy import PolicyConfig
from mcp_hub.policy.acl import CatalogFilter, Decision, decide

POLICY = PolicyConfig.model_validate(yaml.safe_load("""
default_acl: deny
upstream_acl: {open: allow}
groups:
  developer:
    tools:
      allow: ["time__*", "tiny__add"]
      deny: ["time__convert_time"]
    resources:
      allow: ["file:///docs/*"]
      deny: ["file:///docs/private/*"]
    prompts:
      allow: ["review_*"]
  admin:
    tools:
      allow: ["*"]
    resources:
      allow: ["*"]
  contractor:
    tools:
      deny: ["tiny__*"]
"""))

DEV = Consumer("alice", ("developer",))
ADMIN = Consumer("root", ("admin",))


def test_allow_and_deny_in_one_group() -> None:
    assert decide(DEV, "tool", "time__get_current_time", "time", POLICY) == Decision(
        True, "tool 'time__get_current_time' is allowed to group 'developer' by pattern 'time__*'",
        "groups.developer.tools.allow[0]: time__*")
    denied = decide(DEV, "tool", "time__convert_time", "time", POLICY)
    assert not denied.allowed
    assert denied.rule == "groups.developer.tools.deny[0]: time__convert_time"
    assert decide(DEV, "tool", "tiny__add", "tiny", POLICY).rule == "groups.developer.tools.allow[1]: tiny__add"


def test_default_and_upstream_default() -> None:
    unknown = decide(DEV, "tool", "github__create_issue", "github", POLICY)
    assert (unknown.allowed, unknown.rule) == (False, "default_acl: deny")
    opened = decide(DEV, "tool", "open__ping", "open", POLICY)
    assert (opened.allowed, opened.rule) == (True, "upstream_acl.open: allow")
    # An explicit deny beats an upstream default of allow.
    contractor = Consumer("bob", ("contractor",))
    assert decide(contractor, "tool", "tiny__add", "open", POLICY).rule == "groups.contractor.tools.deny[0]: tiny__*"


def test_admin_sees_everything_and_kinds_are_separate() -> None:
    assert decide(ADMIN, "tool", "anything__at_all", "x", POLICY).allowed
    assert decide(ADMIN, "resource", "s3://bucket/key", "x", POLICY).allowed
    # admin has no prompt rules: the default applies.
    assert decide(ADMIN, "prompt", "review_code", "x", POLICY).rule == "default_acl: deny"
    assert decide(DEV, "prompt", "review_code", "x", POLICY).allowed
    assert decide(DEV, "resource", "file:///docs/readme.md", "x", POLICY).allowed
    private = decide(DEV, "resource", "file:///docs/private/keys.txt", "x", POLICY)
    assert private.rule == "groups.developer.resources.deny[0]: file:///docs/private/*"


def test_several_groups_allow_if_any_allows_and_deny_wins() -> None:
    both = Consumer("carol", ("developer", "admin"))
    # admin allows '*', but developer denies convert_time explicitly: deny wins.
    assert not decide(both, "tool", "time__convert_time", "time", POLICY).allowed
    # developer does not mention github; admin allows it.
    assert decide(both, "tool", "github__search", "github", POLICY).rule == "groups.admin.tools.allow[0]: *"
    mixed = Consumer("dave", ("developer", "contractor"))
    assert decide(mixed, "tool", "tiny__add", "tiny", POLICY).rule == "groups.contractor.tools.deny[0]: tiny__*"


def test_unknown_groups_and_no_groups_follow_the_default() -> None:
    for consumer in (Consumer("eve", ("ghosts",)), Consumer("anonymous")):
        decision = decide(consumer, "tool", "time__get_current_time", "time", POLICY)
        assert (decision.allowed, decision.rule) == (False, "default_acl: deny")
    assert decide(Consumer("x"), "tool", "t", None, PolicyConfig()).allowed  # default_acl defaults to allow


def test_globs_are_case_sensitive() -> None:
    assert not decide(DEV, "tool", "TIME__get_current_time", "time", POLICY).allowed


def test_catalog_filter_is_computed_once_per_version_and_group_key() -> None:
    entries = [("time__get_current_time", "time"), ("time__convert_time", "time"), ("tiny__add", "tiny"),
               ("github__search", "github"), ("open__ping", "open")]
    reads = 0

    def catalog() -> list[tuple[str, str]]:
        nonlocal reads
        reads += 1
        return entries

    view = CatalogFilter(POLICY)
    dev = view.visible(DEV.group_key, "tool", 1, catalog())
    assert dev == {"time__get_current_time", "tiny__add", "open__ping"}
    for _ in range(5):
        assert view.visible(Consumer("other-dev", ("developer",)).group_key, "tool", 1, iter(())) == dev
    assert view.computed == 1
    assert view.visible(ADMIN.group_key, "tool", 1, entries) == {name for name, _ in entries}
    assert view.computed == 2
    # A new catalog version recomputes.
    assert view.visible(DEV.group_key, "tool", 2, entries[:1]) == {"time__get_current_time"}
    assert view.computed == 3
    assert reads == 1


# -- properties --------------------------------------------------------------------------------

NAMES = ["a__x", "a__y", "b__x", "b__yy", "c__z", "ax", "a__x_y"]
PATTERNS = ["*", "a__*", "b__*", "*x", "a__x", "?__x", "[ab]__*", "c__z", "*__y*", "zzz"]
GROUPS = ["g1", "g2", "g3"]
UPSTREAMS = ["up1", "up2"]

rules = st.fixed_dictionaries({
    "allow": st.lists(st.sampled_from(PATTERNS), max_size=3),
    "deny": st.lists(st.sampled_from(PATTERNS), max_size=2),
})
policies = st.builds(
    lambda groups, default, upstream_acl: PolicyConfig.model_validate(
        {"default_acl": default, "upstream_acl": upstream_acl,
         "groups": {g: {"tools": r} for g, r in groups.items()}}),
    st.dictionaries(st.sampled_from(GROUPS), rules, max_size=3),
    st.sampled_from(["allow", "deny"]),
    st.dictionaries(st.sampled_from(UPSTREAMS), st.sampled_from(["allow", "deny"]), max_size=1),
)
member_of = st.lists(st.sampled_from([*GROUPS, "unknown"]), unique=True, max_size=4)


def _matches(policy: PolicyConfig, groups: list[str], side: str, name: str) -> bool:
    return any(
        fnmatch.fnmatchcase(name, p)
        for g in groups if g in policy.groups
        for p in getattr(policy.groups[g].tools, side)
    )


def _default(policy: PolicyConfig, upstream: str) -> bool:
    return policy.upstream_acl.get(upstream, policy.default_acl) == "allow"


@settings(max_examples=200, deadline=None)
@given(policies, member_of, st.sampled_from(NAMES), st.sampled_from(UPSTREAMS))
def test_deny_always_wins(policy: PolicyConfig, groups: list[str], name: str, upstream: str) -> None:
    decision = decide(Consumer("p", tuple(groups)), "tool", name, upstream, policy)
    if _matches(policy, groups, "deny", name):
        assert not decision.allowed
        assert ".tools.deny[" in decision.rule


@settings(max_examples=200, deadline=None)
@given(policies, member_of, st.sampled_from(NAMES), st.sampled_from(UPSTREAMS))
def test_unmentioned_names_follow_the_default(policy: PolicyConfig, groups: list[str], name: str, upstream: str) -> None:
    if _matches(policy, groups, "deny", name) or _matches(policy, groups, "allow", name):
        return
    decision = decide(Consumer("p", tuple(groups)), "tool", name, upstream, policy)
    assert decision.allowed == _default(policy, upstream)
    assert decision.rule.startswith(("default_acl:", f"upstream_acl.{upstream}:"))


@settings(max_examples=200, deadline=None)
@given(policies, member_of, st.sampled_from(NAMES), st.sampled_from(UPSTREAMS))
def test_group_order_does_not_matter(policy: PolicyConfig, groups: list[str], name: str, upstream: str) -> None:
    decisions = {
        decide(Consumer("p", perm), "tool", name, upstream, policy)
        for perm in itertools.permutations(groups)
    }
    assert len(decisions) == 1


@settings(max_examples=200, deadline=None)
@given(policies, member_of, st.sampled_from(NAMES), st.sampled_from(UPSTREAMS))
def test_matches_the_documented_rule(policy: PolicyConfig, groups: list[str], name: str, upstream: str) -> None:
    expected = not _matches(policy, groups, "deny", name) and (
        _matches(policy, groups, "allow", name) or _default(policy, upstream))
    assert decide(Consumer("p", tuple(groups)), "tool", name, upstream, policy).allowed == expected
