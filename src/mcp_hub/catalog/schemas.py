"""Compiled JSON-Schema validators for tool schemas, one per schema, and the wording of a violation.

    problem = first_error(tool.input_schema, arguments)  # None, or "owner/login: 5 is not of type 'string'"

A schema is compiled once (`validator_for`, Draft 2020-12 when it names no `$schema`) and checked
against its meta-schema: a broken schema compiles to "no validator", so it never blocks a call.

An instance is checked first by a Rust validator of the same schema (jsonschema-rs: `is_valid`, about
60x to 160x faster than walking the schema in Python, 0.2 us against 11 us for a one-property schema and
1 us against 180 us for a 22-property one); only an instance it finds invalid is walked by the Python
validator, whose wording and verdict the caller gets. A schema it cannot compile (an external `$ref`)
is checked by the Python validator alone. Neither validator ever fetches a `$ref` (`NO_FETCH`): an
unresolvable one makes the schema broken, which never blocks a call.

Validators are kept in an LRU keyed by the schema object's identity: a hit costs a dict lookup
(~0.15 µs for a 20-property schema, where hashing its canonical JSON costs ~21 µs, half the
validation itself). Each entry holds its schema, so an id cannot be reused while it is cached;
schemas of a rebuilt catalog that are new objects take new entries, and the old ones age out
under the size bound instead of leaking.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import jsonschema
import jsonschema_rs
import referencing
import referencing.exceptions
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator

#: The longest wording `first_error` returns.
MAX_WORDING = 500


def describe(error: ValidationError, root: str = "arguments") -> str:
    """`<path>: <message>` for one violation, its path `/`-joined (`root` when at the top), at most 500 chars."""
    where = "/".join(str(part) for part in error.absolute_path) or root
    return f"{where}: {error.message}"[:MAX_WORDING]


class SchemaValidators:
    """An LRU of compiled validators keyed by schema identity, at most `max_entries` of them."""

    def __init__(self, max_entries: int = 4096) -> None:
        if max_entries < 1:
            raise ValueError("a validator cache needs room for at least one schema")
        self.max_entries = max_entries
        # schema id -> (schema, Python validator or None when broken, Rust validator or None)
        self._entries: OrderedDict[int, tuple[Any, Validator | None, Any]] = OrderedDict()
        # Lookups come from the event loop and worker threads alike; the LRU bookkeeping must not interleave.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def validator(self, schema: Mapping[str, Any] | bool) -> Validator | None:
        """The compiled validator for `schema`, compiled on first use; None when the schema is broken."""
        return self._pair(schema)[0]

    def _pair(self, schema: Mapping[str, Any] | bool) -> tuple[Validator | None, Any]:
        key = id(schema)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is schema:
                self._entries.move_to_end(key)
                return entry[1], entry[2]
        compiled = _compile(schema)  # outside the lock: meta-schema checking takes milliseconds
        fast = fast_validator(schema) if compiled is not None else None
        self._remember(schema, compiled, fast)
        return compiled, fast

    def first_error(self, schema: Mapping[str, Any] | bool, instance: Any, *, root: str = "arguments") -> str | None:
        """The wording (`describe`) of the first violation by path order, or None when `instance` fits.

        None too when the schema is broken: a call is never refused for the upstream's mistake.
        """
        validator, fast = self._pair(schema)
        if validator is None:
            return None
        if surely_fits(fast, instance):
            return None
        try:
            # Full walk (as the gateway always did), then the first by path: deterministic across runs.
            error = min(validator.iter_errors(instance), key=lambda e: list(e.absolute_path), default=None)
        except Exception:  # noqa: BLE001 - e.g. an unresolvable $ref: the schema is broken, not the call
            self._remember(schema, None, None)
            return None
        return describe(error, root) if error is not None else None

    def _remember(self, schema: Any, compiled: Validator | None, fast: Any) -> None:
        with self._lock:
            self._entries[id(schema)] = (schema, compiled, fast)
            self._entries.move_to_end(id(schema))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


def _refuse_retrieval(uri: str) -> Any:
    """The retriever of both validators: a `$ref` outside the schema is never fetched."""
    raise referencing.exceptions.NoSuchResource(ref=uri)


#: What validators resolve a `$ref` outside their schema with: nothing. Left to itself, jsonschema fetches an
#: `http(s)` `$ref` with urllib (a deprecated fallback it still has): a tool schema an upstream sends would make
#: the gateway request any address it names, from inside its network, on every call.
NO_FETCH: referencing.Registry[Any] = referencing.Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]


def python_validator(schema: Mapping[str, Any] | bool) -> Validator:
    """jsonschema's validator for `schema` (Draft 2020-12 unless it names another) that never fetches a `$ref`."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, registry=NO_FETCH)


def _compile(schema: Mapping[str, Any] | bool) -> Validator | None:
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
        return python_validator(schema)
    except Exception:  # noqa: BLE001 - a broken schema must not block its tool's calls
        return None


def fast_validator(schema: Mapping[str, Any] | bool) -> Any:
    """The Rust validator of a schema (its `is_valid` answers whether an instance fits); None when it cannot be
    built (then the Python validator checks every instance). Draft 2020-12 when the schema names none, formats
    not asserted, as the Python validator; a `$ref` outside the schema is refused, never fetched."""
    try:
        return jsonschema_rs.validator_for(schema, validate_formats=False, retriever=_refuse_retrieval)
    except Exception:  # noqa: BLE001
        return None


def surely_fits(fast: Any, instance: Any) -> bool:
    """Whether the Rust validator `fast` (`fast_validator`) says `instance` fits. False when there is none, when
    it says no, or when it cannot take the value (an integer past 64 bits): the Python validator decides then."""
    if fast is None:
        return False
    try:
        return bool(fast.is_valid(instance))
    except Exception:  # noqa: BLE001
        return False


#: The process's cache, shared by the gateway and the upstreams.
validators = SchemaValidators()


def validator(schema: Mapping[str, Any] | bool) -> Validator | None:
    """The shared cache's compiled validator for `schema` (None when the schema is broken)."""
    return validators.validator(schema)


def first_error(schema: Mapping[str, Any] | bool, instance: Any, *, root: str = "arguments") -> str | None:
    """The shared cache's wording of the first violation of `schema` by `instance`, or None."""
    return validators.first_error(schema, instance, root=root)
