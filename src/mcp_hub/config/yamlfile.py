"""Reading YAML for configs and connectors: safe loading, and a key given twice is an error.

PyYAML keeps the last of two equal keys in one mapping, so a second `groups.developer` would
silently replace the first; here it is refused with the key path and both line numbers.
"""

from __future__ import annotations

from typing import Any

import yaml

from mcp_hub.config.errors import ConfigError

_MERGE_TAG = "tag:yaml.org,2002:merge"


def load_yaml(text: str, source: str | None = None) -> Any:
    """The document in `text`, or `ConfigError` for invalid YAML or a mapping with a repeated key."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        problems: list[str] = []
        _find_repeats(node, "", problems, set())
        if problems:
            raise ConfigError(problems, source)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"<root>: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"], source) from None
    finally:
        loader.dispose()


def _find_repeats(node: yaml.Node, path: str, problems: list[str], seen: set[int]) -> None:
    if id(node) in seen:  # an alias points back at a node already walked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                _find_repeats(value_node, path, problems, seen)
                continue
            if isinstance(key_node, yaml.ScalarNode):
                key = key_node.value
                child = f"{path}.{key}" if path else key
                line = key_node.start_mark.line + 1
                if (key_node.tag, key) in first:
                    problems.append(
                        f"{child}: given twice (lines {first[(key_node.tag, key)]} and {line}); "
                        "merge the two or delete one (the second would silently replace the first)"
                    )
                else:
                    first[(key_node.tag, key)] = line
            else:
                child = f"{path}.<key>" if path else "<key>"
            _find_repeats(value_node, child, problems, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _find_repeats(item, f"{path}[{index}]", problems, seen)
