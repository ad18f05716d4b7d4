"""``${VAR}`` expansion: environment variables in the configuration's strings.

``${VAR}`` and ``${VAR:-default}`` are replaced by the variable (the default
when it is unset or empty); ``$${`` writes a literal ``${``. A reference that
cannot be expanded raises :class:`~streamgmm.config.kinds._Invalid`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from .kinds import _Invalid

_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_VAR = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.S)


def _expand(text: str, suffix: str, env: Mapping[str, str]) -> tuple[str, bool]:
    """Expand ``${VAR}`` / ``${VAR:-default}``; return (text, whether any was expanded)."""
    if "$" not in text:
        return text, False
    expanded = False

    def replace(match: re.Match) -> str:
        nonlocal expanded
        if match.group(0) == "$${":
            return "${"
        inner = match.group(1)
        ref = _VAR.fullmatch(inner)
        if ref is None:
            raise _Invalid(
                f"${{{inner}}} is not a valid reference; write ${{NAME}} or "
                "${NAME:-default} (NAME: letters, digits, _), or $${ for a literal ${",
                suffix,
            )
        name, default = ref.group(1), ref.group(2)
        expanded = True
        value = env.get(name)
        if value:
            return value
        if default is not None:
            return default
        if value is not None:  # set but empty, no default
            return value
        raise _Invalid(
            f"environment variable {name} is not set; export it, or write "
            f"${{{name}:-default}} to give a default",
            suffix,
        )

    return _REF.sub(replace, text), expanded


def _expand_tree(value: Any, suffix: str, env: Mapping[str, str]) -> tuple[Any, bool]:
    """Expand references in every string of ``value``; ``suffix`` locates it for errors."""
    if isinstance(value, str):
        return _expand(value, suffix, env)
    if isinstance(value, list):
        items = [_expand_tree(v, f"{suffix}[{i}]", env) for i, v in enumerate(value)]
        return [v for v, _ in items], any(e for _, e in items)
    if isinstance(value, dict):
        out = {}
        any_expanded = False
        for k, v in value.items():
            out[k], e = _expand_tree(v, f"{suffix}.{k}", env)
            any_expanded = any_expanded or e
        return out, any_expanded
    return value, False


def _scalar_from_env(text: str) -> Any:
    """Parse an expanded string as a YAML scalar (``"8"`` -> 8, ``"true"`` -> True)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, str)) or value is None else text
