"""The `catalog:` config: its errors (each naming the key path), how its levels combine, what is checked at
start, and the measure through `mcp-hub tools` and `mcp-hub check` (real CLI processes, real upstream)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from mcp_hub.config import ConfigError, parse_config
from mcp_hub.config.catalog import DEFAULT_META_TOOLS
from mcp_hub.core.economy import catalog_levels, check_config, combine, meta_tools
from tests.support.gateway import gateway_env
from tests.support.tools import ROOT


def _problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    return caught.value.problems


@pytest.mark.parametrize(("raw", "expected"), [
    ({"catalog": {"max_tokens": 0}}, "catalog.max_tokens: Input should be greater than or equal to 1"),
    ({"catalog": {"max_tokens": "lots"}}, "catalog.max_tokens: "),
    ({"catalog": {"maxtokens": 5000}}, "catalog.maxtokens: is not a known key; did you mean max_tokens?"),
    ({"servers": [{"path": "/x", "catalog": {"always": [""]}}]}, "servers[0].catalog.always: "),
    ({"groups": {"dev": {"catalog": {"counter": "not a counter"}}}}, "groups.dev.catalog.counter: must be "),
    ({"groups": {"dev": {"catalog": {"max_description": -3}}}}, "groups.dev.catalog.max_description: "),
    ({"catalog": {"meta_tools": {"search": "catalog_browse"}}}, "catalog.meta_tools: the four meta-tools need"),
    ({"catalog": {"meta_tools": {"call": "bad name!"}}}, "catalog.meta_tools.call: "),
    ({"catalog": {"meta_tools": {"find": "x"}}}, "catalog.meta_tools.find: is not a known key"),
    ({"catalog": ["max_tokens", 5000]}, "catalog: "),
])
def test_config_errors_name_the_key_path(raw: dict[str, Any], expected: str) -> None:
    problems = _problems(raw)
    assert any(p.startswith(expected) for p in problems), problems


def test_the_issue_form_is_accepted_verbatim() -> None:
    config = parse_config(yaml.safe_load("catalog: {max_tokens: 5000}"))
    assert config.catalog is not None and config.catalog.max_tokens == 5000
    settings = combine(catalog_levels(config, "/mcp", ()))
    assert settings.max_tokens == 5000 and settings.names == DEFAULT_META_TOOLS and settings.always == ()
    assert parse_config({"catalog": {"always": "time__*"}}).catalog.always == ["time__*"]  # type: ignore[union-attr]


def test_levels_combine() -> None:
    config = parse_config({
        "upstreams": {"time": {"transport": "stdio", "command": "mcp-server-time"}},
        "catalog": {"max_tokens": 5000, "always": ["a*"], "counter": "bytes", "meta_tools": {"browse": "toolsets"}},
        "servers": [{"path": "/lean", "catalog": {"max_tokens": 2000, "always": ["b*"], "max_description": 100}}],
        "groups": {
            "big": {"catalog": {"max_tokens": 100000, "meta_tools": {"search": "find"}}},
            "small": {"catalog": {"max_tokens": 3000, "warn_tokens": 9000, "always": ["c*"],
                                  "meta_tools": {"search": "lookup"}}},
        },
    })
    top = combine(catalog_levels(config, "/mcp", ()))
    assert (top.max_tokens, top.always, top.counter, top.names["browse"]) == (5000, ("a*",), "bytes", "toolsets")
    route = combine(catalog_levels(config, "/lean", ()))
    assert (route.max_tokens, route.always, route.max_description) == (2000, ("a*", "b*"), 100)
    # a group's setting wins over the route's
    big = combine(catalog_levels(config, "/lean", ("big",)))
    assert big.max_tokens == 100000 and big.names == {**DEFAULT_META_TOOLS, "browse": "toolsets", "search": "find"}
    # several groups: the smallest budget, the first group (by name) for names, every always glob
    both = combine(catalog_levels(config, "/lean", ("small", "big")))
    assert (both.max_tokens, both.warn_tokens) == (3000, 9000)
    assert both.names["search"] == "find" and both.always == ("a*", "b*", "c*")
    assert both.counter_key == "catalog.counter"
    assert combine(catalog_levels(config, "/mcp", ("nobody",))).measured  # the top level applies


def test_check_config_loads_counters_and_names_the_key() -> None:
    config = parse_config({"groups": {"dev": {"catalog": {"counter": "no_such_module_here:count"}}},
                           "catalog": {"counter": "builtins:len", "max_tokens": 10}})
    with pytest.raises(ConfigError) as caught:
        check_config(config)
    assert caught.value.problems == [
        "groups.dev.catalog.counter: token counter 'no_such_module_here:count': cannot import module "
        "'no_such_module_here' (No module named 'no_such_module_here')"]
    clash = parse_config({"catalog": {"meta_tools": {"search": "find"}},
                          "groups": {"dev": {"catalog": {"meta_tools": {"browse": "find"}}}}})
    with pytest.raises(ConfigError, match=r"groups\.dev\.catalog\.meta_tools: on /mcp the meta-tools would share"):
        check_config(clash)


def test_meta_tools_have_valid_schemas_and_their_names() -> None:
    settings = combine([])
    tools = meta_tools(settings, 1234)
    assert [t.name for t in tools] == list(DEFAULT_META_TOOLS.values())
    for tool in tools:
        Draft202012Validator.check_schema(tool.input_schema)
        assert tool.input_schema["type"] == "object"
    assert "1234 tools" in (tools[0].description or "")


# -- through the CLI ---------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcp_hub.cli", *args], capture_output=True, text=True,
                          env=gateway_env(), cwd=ROOT, timeout=120)


def _write(tmp_path: Path, name: str, catalog: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({
        "upstreams": {"time": {"transport": "stdio", "command": "mcp-server-time"}},
        "catalog": catalog,
        "groups": {"dev": {"tools": {"allow": ["time__get_current_time"]}}},
        "default_acl": "deny",
    }))
    return path


def test_tools_prints_tokens_per_tool_and_the_total(tmp_path: Path) -> None:
    estimate = _cli("tools", "--config", str(_write(tmp_path, "est.yaml", {"max_tokens": 100})), "--group", "dev",
                    "--json")
    assert estimate.returncode == 0, estimate.stderr
    chars = _cli("tools", "--config", str(_write(tmp_path, "len.yaml", {"counter": "builtins:len"})), "--group", "dev",
                 "--json")
    assert chars.returncode == 0, chars.stderr
    by_estimate = json.loads(estimate.stdout)["routes"]["/mcp"]
    by_chars = json.loads(chars.stdout)["routes"]["/mcp"]
    # the estimate is ceil(characters / 4) of the same listing text, per tool and in total
    assert by_estimate["catalog"]["tokens"] == math.ceil(by_chars["catalog"]["tokens"] / 4)
    assert [t["tokens"] for t in by_estimate["tools"]] == [math.ceil(t["tokens"] / 4) for t in by_chars["tools"]]
    assert by_chars["catalog"]["counter"] == "builtins:len"
    # one tool costs less than the meta-tools would: the listing stays as it is
    assert by_estimate["catalog"]["compact"] is False and by_estimate["catalog"]["tokens"] > 100

    table = _cli("tools", "--config", str(tmp_path / "est.yaml"), "--group", "dev")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[1].split() == ["TOOL", "UPSTREAM", "TOKENS", "DESCRIPTION"]
    assert lines[2].split()[:3] == ["time__get_current_time", "time", str(by_estimate["tools"][0]["tokens"])]
    total = by_estimate["catalog"]["tokens"]
    assert f"total: {total:,} tokens of max_tokens 100 (tools/list as the client receives it; counter estimate)" \
        in table.stdout


def test_check_refuses_a_counter_that_does_not_load(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.yaml", {"max_tokens": 100, "counter": "no_such_module_here:count"})
    checked = _cli("check", str(path))
    assert checked.returncode != 0
    assert "catalog.counter: token counter 'no_such_module_here:count': cannot import module" in checked.stderr
    assert "Traceback" not in checked.stderr
