"""The value kinds: what a configuration key accepts, and how it is described.

A kind converts one YAML value into the typed value of its key, or raises
:class:`_Invalid` with a message that completes ``"<key path>: "``; its
:meth:`~Kind.describe` is the type column of the generated reference.
Every option of a kind is a keyword (``Int(ge=1, le=256)``, ``Float(gt=0)``,
``Str(pattern=..., hint=...)``), so a declaration reads without the class at
hand. :func:`_key` declares a key of the schema with its kind, default and
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


class Kind:
    """Base of the value kinds; ``convert`` returns the typed value or raises."""

    text = "value"
    #: whether a string produced by ${VAR} expansion is parsed as a YAML scalar first
    parse_env = True

    def convert(self, value: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        return self.text


class Str(Kind):
    """A string; non-empty unless ``allow_empty``, matching ``pattern`` if given.

    ``hint`` completes the error when the pattern does not match: say what to write.
    """

    text = "string"
    parse_env = False

    def __init__(
        self, *, pattern: str | None = None, hint: str = "", allow_empty: bool = False
    ) -> None:
        self.pattern = re.compile(pattern) if pattern else None
        self.hint = hint
        self.allow_empty = allow_empty

    def convert(self, value: Any) -> str:
        if not isinstance(value, str):
            raise _Invalid(f"must be a string, got {_show(value)}; quote it in the YAML")
        if not value and not self.allow_empty:
            raise _Invalid("must not be empty")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise _Invalid(f"{value!r} is not valid: {self.hint}")
        return value


class _Bounded(Kind):
    """A number within optional bounds: ``gt``/``ge`` below, ``lt``/``le`` above."""

    def __init__(
        self,
        *,
        ge: float | None = None,
        gt: float | None = None,
        le: float | None = None,
        lt: float | None = None,
    ) -> None:
        self.ge, self.gt, self.le, self.lt = ge, gt, le, lt

    def describe(self) -> str:
        bounds = []
        if self.gt is not None:
            bounds.append(f"> {self.gt}")
        if self.ge is not None:
            bounds.append(f">= {self.ge}")
        if self.lt is not None:
            bounds.append(f"< {self.lt}")
        if self.le is not None:
            bounds.append(f"<= {self.le}")
        return f"{self.text} {', '.join(bounds)}" if bounds else self.text

    def _within_bounds(self, value: float) -> Any:
        for bound, ok, word in (
            (self.gt, lambda b: value > b, ">"),
            (self.ge, lambda b: value >= b, ">="),
            (self.lt, lambda b: value < b, "<"),
            (self.le, lambda b: value <= b, "<="),
        ):
            if bound is not None and not ok(bound):
                raise _Invalid(f"must be {word} {bound}, got {_show(value)}")
        return value


class Int(_Bounded):
    """An integer (a float with no fraction, ``8.0``, is taken as ``8``); never a boolean."""

    text = "integer"

    def convert(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(f"must be an integer, got {_show(value)}")
        if not isinstance(value, int):
            if not value.is_integer():
                raise _Invalid(f"must be an integer, got {_show(value)}")
            value = int(value)
        return self._within_bounds(value)


class Float(_Bounded):
    """A finite number, returned as a float; never a boolean."""

    text = "number"

    def convert(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(f"must be a number, got {_show(value)}")
        value = float(value)
        if not math.isfinite(value):
            raise _Invalid(f"must be a finite number, got {_show(value)}")
        return self._within_bounds(value)


class Bool(Kind):
    text = "boolean"

    def convert(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise _Invalid(f"must be true or false, got {_show(value)}")
        return value


class Choice(Kind):
    """One of ``values``; with ``upper``, compared (and returned) upper-cased."""

    def __init__(self, *, values: tuple[str, ...], upper: bool = False) -> None:
        self.values = values
        self.upper = upper

    def describe(self) -> str:
        return "one of " + ", ".join(self.values)

    def convert(self, value: Any) -> str:
        candidate = value.upper() if self.upper and isinstance(value, str) else value
        if not isinstance(candidate, str) or candidate not in self.values:
            raise _Invalid(f"must be one of {', '.join(self.values)}, got {_show(value)}")
        return candidate


class IntOrAuto(Int):
    """An integer ``>= ge``, or the string ``"auto"``."""

    def __init__(self, *, ge: int) -> None:
        super().__init__(ge=ge)

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


class StrList(Kind):
    """A non-empty list of strings; a comma-separated string is accepted too."""

    parse_env = False

    def __init__(self, *, item: Str, min_items: int = 1, unique: bool = False) -> None:
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


class FreeMapping(Kind):
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


class Section(Kind):
    """A nested section: the keys of the dataclass ``cls``."""

    text = "section"
    parse_env = False

    def __init__(self, *, cls: type) -> None:
        self.cls = cls


def _key(
    kind: Kind, default: Any, doc: str, *, nullable: bool = False, required: bool = False
) -> Any:
    """Declare one config key: its kind, default and description (the schema table)."""
    meta = {
        "kind": kind,
        "default": default,
        "doc": doc,
        "nullable": nullable,
        "required": required,
    }
    if isinstance(kind, Section):
        return field(default_factory=kind.cls, metadata=meta)
    if isinstance(default, Mapping):
        return field(default_factory=lambda: types.MappingProxyType(dict(default)), metadata=meta)
    if isinstance(default, list):
        raise TypeError("use tuples / None for container defaults")
    return field(default=None if required else default, metadata=meta)
