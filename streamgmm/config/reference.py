"""The reference: every key of the schema, walked in order and written as Markdown.

:func:`reference_markdown` generates docs/configuration.md from the schema;
a test checks that the committed file matches it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import yaml

from .kinds import Section
from .schema import Config


def iter_keys(cls: type = Config, prefix: str = ""):
    """Yield ``(path, field)`` for every leaf key of the schema, in order."""
    for f in fields(cls):
        path = f"{prefix}{f.name}"
        kind = f.metadata["kind"]
        if isinstance(kind, Section):
            yield from iter_keys(kind.cls, path + ".")
        else:
            yield path, f


def _yaml_value(value: Any) -> str:
    if isinstance(value, Mapping):
        value = dict(value)
    if isinstance(value, tuple):
        value = list(value)
    return (
        yaml.safe_dump(value, default_flow_style=True, width=1000)
        .strip()
        .removesuffix("\n...")
        .strip()
    )


def reference_markdown() -> str:
    """Every key, its type, default and description, as Markdown (docs/configuration.md).

    >>> print(reference_markdown().splitlines()[0])
    # streamgmm configuration reference
    """
    lines = [
        "# streamgmm configuration reference",
        "",
        "Generated from `streamgmm/config/schema.py` by `streamgmm.config.reference_markdown()`; "
        "do not edit by hand. `config/streamgmm.yaml` is the annotated example.",
        "",
        "Unknown keys are errors. `${VAR}` and `${VAR:-default}` in string values are "
        "replaced by environment variables (`$${` is a literal `${`).",
    ]

    def section(cls: type, prefix: str) -> None:
        leaves = [f for f in fields(cls) if not isinstance(f.metadata["kind"], Section)]
        if leaves:
            lines.extend(["", f"## `{prefix.rstrip('.')}`", "", (cls.__doc__ or "").strip(), ""])
            lines.append("| key | type | default | description |")
            lines.append("| --- | --- | --- | --- |")
            for f in leaves:
                meta = f.metadata
                kind_text = meta["kind"].describe() + (", or null" if meta["nullable"] else "")
                default = "*required*" if meta["required"] else f"`{_yaml_value(meta['default'])}`"
                doc = meta["doc"].replace("|", "\\|")
                lines.append(f"| `{prefix}{f.name}` | {kind_text} | {default} | {doc} |")
        for f in fields(cls):
            if isinstance(f.metadata["kind"], Section):
                section(f.metadata["kind"].cls, f"{prefix}{f.name}.")

    section(Config, "")
    return "\n".join(lines) + "\n"
