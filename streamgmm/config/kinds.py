"""The value kinds: what a configuration key accepts, and how it is described.

A kind converts one YAML value into the typed value of its key, or raises
:class:`_Invalid` with a message that completes ``"<key path>: "``; its
:meth:`~_Kind.describe` is the type column of the generated reference.
:func:`_key` declares a key of the schema with its kind, default and
description.
"""

from __future__ import annotations

import math
import re
import types
from collections.abc import Mapping
from dataclasses import field
from typing import Any


class _Invalid(Exception):
    """One value is wrong; the message completes ``"<key path><suffix>: "``.

    ``suffix`` locates the culprit inside the value (``"[2]"``, ``".user"``).
    """

    def __init__(self, message: str, suffix: str = "") -> None:
        super().__init__(message)
        self.suffix = suffix


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


class _Kind:
    """Base of the value kinds; ``convert`` returns the typed value or raises."""

    text = "value"
    #: whether a string produced by ${VAR} expansion is parsed as a YAML scalar first
    parse_env = True

    def convert(self, value: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        return self.text


class _Str(_Kind):
    parse_env = False

    def __init__(self, pattern: str | None = None, hint: str = "", allow_empty: bool = False):
        self.pattern = re.compile(pattern) if pattern else None
        self.hint = hint
        self.allow_empty = allow_empty
        self.text = "string"

    def convert(self, value: Any) -> str:
        if not isinstance(value, str):
            raise _Invalid(f"must be a string, got {_show(value)}; quote it in the YAML")
        if not value and not self.allow_empty:
            raise _Invalid("must not be empty")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise _Invalid(f"{value!r} is not valid: {self.hint}")
        return value


class _Number(_Kind):
    def __init__(self, integer: bool, ge=None, gt=None, le=None, lt=None):
        self.integer, self.ge, self.gt, self.le, self.lt = integer, ge, gt, le, lt

    def describe(self) -> str:
        text = "integer" if self.integer else "number"
        bounds = []
        if self.gt is not None:
            bounds.append(f"> {self.gt}")
        if self.ge is not None:
            bounds.append(f">= {self.ge}")
        if self.lt is not None:
            bounds.append(f"< {self.lt}")
        if self.le is not None:
            bounds.append(f"<= {self.le}")
        return f"{text} {', '.join(bounds)}" if bounds else text

    def convert(self, value: Any) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            want = "an integer" if self.integer else "a number"
            raise _Invalid(f"must be {want}, got {_show(value)}")
        if self.integer and not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise _Invalid(f"must be an integer, got {_show(value)}")
        if not self.integer:
            value = float(value)
            if not math.isfinite(value):
                raise _Invalid(f"must be a finite number, got {_show(value)}")
        for bound, ok, word in (
            (self.gt, lambda b: value > b, ">"),
            (self.ge, lambda b: value >= b, ">="),
            (self.lt, lambda b: value < b, "<"),
            (self.le, lambda b: value <= b, "<="),
        ):
            if bound is not None and not ok(bound):
                raise _Invalid(f"must be {word} {bound}, got {_show(value)}")
        return value


class _Bool(_Kind):
    text = "boolean"

    def convert(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise _Invalid(f"must be true or false, got {_show(value)}")
        return value


class _Choice(_Kind):
    def __init__(self, *choices: str, upper: bool = False):
        self.choices = choices
        self.upper = upper

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices)

    def convert(self, value: Any) -> str:
        candidate = value.upper() if self.upper and isinstance(value, str) else value
        if not isinstance(candidate, str) or candidate not in self.choices:
            raise _Invalid(f"must be one of {', '.join(self.choices)}, got {_show(value)}")
        return candidate


class _IntOrAuto(_Number):
    def __init__(self, ge: int):
        super().__init__(integer=True, ge=ge)

    def describe(self) -> str:
        return f'integer >= {self.ge}, or "auto"'

    def convert(self, value: Any) -> int | str:
        if value == "auto":
            return "auto"
        try:
            return super().convert(value)
        except _Invalid:
            raise _Invalid(
                f'must be an integer >= {self.ge} or "auto", got {_show(value)}'
            ) from None


class _StrList(_Kind):
    """A non-empty list of strings; a comma-separated string is accepted too."""

    parse_env = False

    def __init__(self, item: _Str, min_items: int = 1, unique: bool = False):
        self.item, self.min_items, self.unique = item, min_items, unique

    def describe(self) -> str:
        return "list of strings (or one comma-separated string)"

    def convert(self, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            raise _Invalid(f"must be a list of strings, got {_show(value)}")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(self.item.convert(item))
            except _Invalid as exc:
                raise _Invalid(str(exc), f"[{i}]") from None
        if len(out) < self.min_items:
            raise _Invalid(f"must list at least {self.min_items} item(s)")
        if self.unique:
            seen = set()
            for i, item in enumerate(out):
                if item in seen:
                    raise _Invalid(f"{item!r} is listed twice; list each once", f"[{i}]")
                seen.add(item)
        return tuple(out)


class _Mapping(_Kind):
    """A free mapping (client options), checked later by its section's validator."""

    text = "mapping"
    parse_env = False

    def convert(self, value: Any) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise _Invalid(f"must be a mapping (key: value lines), got {_show(value)}")
        for name in value:
            if not isinstance(name, str):
                raise _Invalid(f"keys must be strings, got {name!r}")
        return types.MappingProxyType(dict(value))


class _Section(_Kind):
    parse_env = False

    def __init__(self, cls: type):
        self.cls = cls
        self.text = "section"


_REQUIRED = object()


def _key(
    kind: _Kind, default: Any, doc: str, *, nullable: bool = False, required: bool = False
) -> Any:
    """Declare one config key: its kind, default and description (the schema table)."""
    meta = {
        "kind": kind,
        "default": default,
        "doc": doc,
        "nullable": nullable,
        "required": required,
    }
    if isinstance(kind, _Section):
        return field(default_factory=kind.cls, metadata=meta)
    if isinstance(default, Mapping):
        return field(default_factory=lambda: types.MappingProxyType(dict(default)), metadata=meta)
    if isinstance(default, list):
        raise TypeError("use tuples / None for container defaults")
    return field(default=None if required else default, metadata=meta)
