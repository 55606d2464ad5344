"""The `catalog:` section: a token budget for what `tools/list` costs an agent, and the compact catalog's meta-tools.

It may sit at the top level (every route), in a `servers:` entry (that route) and in a group of
`groups:` (that group's callers); docs/catalog.md says how the levels combine. Example::

    catalog:
      max_tokens: 5000                 # over it, the route lists the compact catalog
      warn_tokens: 20000               # log a warning when a group's catalog passes it
      always: ["time__*"]              # listed in the compact catalog as well
      counter: estimate                # or bytes, or package.module:function
      max_description: 300             # cut listed descriptions of the compact catalog
      meta_tools: {search: find_tool}  # names of the meta-tools (defaults below)
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

# The names the meta-tools get unless `meta_tools` renames them.
DEFAULT_META_TOOLS: dict[str, str] = {
    "browse": "catalog_browse",
    "search": "catalog_search",
    "describe": "catalog_describe",
    "call": "catalog_call",
}
_TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
_COUNTER = re.compile(
    r"^([A-Za-z_][A-Za-z0-9_]*|[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*)$"
)


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class _Model(BaseModel):
    # hide_input_in_errors: an error names the key, never the value it was given.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class MetaToolNames(_Model):
    """The exposed names of the compact catalog's four meta-tools; unset ones keep their default."""

    browse: str | None = Field(default=None, pattern=_TOOL_NAME,
                               description="Lists the toolsets with one line and a tool count each "
                               "(default `catalog_browse`).")
    search: str | None = Field(default=None, pattern=_TOOL_NAME,
                               description="Ranked search over the tools the caller may use "
                               "(default `catalog_search`).")
    describe: str | None = Field(default=None, pattern=_TOOL_NAME,
                                 description="Full schemas of named tools (default `catalog_describe`).")
    call: str | None = Field(default=None, pattern=_TOOL_NAME,
                             description="Calls any tool the caller may call by its exposed name "
                             "(default `catalog_call`).")

    @model_validator(mode="after")
    def _distinct(self) -> MetaToolNames:
        names = self.resolved()
        if len(set(names.values())) != len(names):
            raise ValueError(f"the four meta-tools need four different names, got {names}")
        return self

    def resolved(self, under: dict[str, str] | None = None) -> dict[str, str]:
        """role -> name: this entry's names over `under` (the defaults when absent)."""
        base = dict(under or DEFAULT_META_TOOLS)
        return {role: getattr(self, role) or base[role] for role in DEFAULT_META_TOOLS}


class CatalogConfig(_Model):
    """How much the tool catalog may cost in an agent's context, and what a caller gets past that."""

    max_tokens: int | None = Field(
        default=None, ge=1,
        description="Token budget of the route's `tools/list` as the caller receives it; over it the caller gets the "
        "compact catalog (the `always` tools and four meta-tools). Absent: no budget.")
    warn_tokens: int | None = Field(
        default=None, ge=1,
        description="Log a warning when a group's full catalog on a route costs more tokens than this (whether "
        "or not it is served compact).")
    always: Annotated[list[str], BeforeValidator(_listed)] = Field(
        default_factory=list,
        description="Globs over exposed tool names listed in the compact catalog too (when the caller may see "
        "them); the levels add up.")
    counter: str | None = Field(
        default=None,
        description="How tokens are counted: `estimate` (ceil(characters / 4), the default), `bytes`, or "
        "`package.module:function` (a function taking the text and returning a count).")
    max_description: int | None = Field(
        default=None, ge=1,
        description="Cut the descriptions of the compact catalog's listed tools to this many characters.")
    meta_tools: MetaToolNames = Field(
        default_factory=MetaToolNames,
        description="Names of the meta-tools (`browse`, `search`, `describe`, `call`).")

    @field_validator("always")
    @classmethod
    def _globs(cls, value: list[str]) -> list[str]:
        for index, pattern in enumerate(value):
            if not isinstance(pattern, str) or not pattern or pattern != pattern.strip():
                raise ValueError(f"pattern [{index}] must be a non-empty glob without surrounding spaces")
        return value

    @field_validator("counter")
    @classmethod
    def _counter(cls, value: str | None) -> str | None:
        if value is not None and not _COUNTER.match(value):
            raise ValueError("must be 'estimate', a registered counter name such as 'bytes', "
                             "or 'package.module:function'")
        return value
