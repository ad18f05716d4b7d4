"""Loading: YAML text or a parsed mapping, validated into a :class:`Config`.

The YAML loader refuses duplicate keys; :func:`_build` walks the schema,
expanding ``${VAR}`` and converting each value by its kind; the cross-key
checks run last; every error found on the way is raised at once in one
:class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from .checks import _cross_checks
from .env import _expand_tree, _scalar_from_env
from .kinds import FreeMapping, Kind, Section, _Invalid, _show
from .schema import Config


class ConfigError(ValueError):
    """The configuration cannot be used; :attr:`errors` lists every problem.

    Each entry starts with the full key path (``model.warmup: ...``) and says
    what to do about it.
    """

    def __init__(self, errors: Sequence[str], source: str | None = None) -> None:
        self.errors = tuple(errors)
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(
            f"invalid configuration{where}:\n" + "\n".join(f"  - {e}" for e in self.errors)
        )


ConfigError.__module__ = "streamgmm.config"  # its public name, in tracebacks too


def _build(cls: type, raw: Any, path: str, env: Mapping[str, str], errors: list[str]) -> Any:
    where = path or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{where}: must be a mapping of keys, got {_show(raw)}")
        raw = {}
    known = {f.name: f for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in known:
            full = f"{path}.{name}" if path else str(name)
            close = difflib.get_close_matches(str(name), list(known), n=1)
            hint = (f"did you mean {close[0]!r}? " if close else "") + (
                f"valid keys here: {', '.join(known)}"
            )
            errors.append(f"{full}: unknown key; {hint}")
    values: dict[str, Any] = {}
    for name, f in known.items():
        meta = f.metadata
        kind: Kind = meta["kind"]
        full = f"{path}.{name}" if path else name
        if isinstance(kind, Section):
            values[name] = _build(kind.cls, raw.get(name), full, env, errors)
            continue
        if name not in raw:
            if meta["required"]:
                errors.append(f"{full}: is required; {meta['doc']}")
            values[name] = meta["default"]
            continue
        value = raw[name]
        try:
            from_env = False
            if not isinstance(kind, FreeMapping):  # free mappings are expanded by their checker
                value, from_env = _expand_tree(value, "", env)
            if from_env and kind.parse_env and isinstance(value, str):
                value = _scalar_from_env(value)
            if value is None:
                if not meta["nullable"]:
                    raise _Invalid(f"must not be null; {kind.describe()} expected")
                values[name] = None
                continue
            values[name] = kind.convert(value)
        except _Invalid as exc:
            errors.append(f"{full}{exc.suffix}: {exc}")
            values[name] = meta["default"]
    return cls(**values)


def parse_config(
    raw: Mapping[str, Any] | None,
    *,
    env: Mapping[str, str] | None = None,
    source: str | None = None,
) -> Config:
    """Validate a configuration mapping (as read from YAML) into a :class:`Config`.

    Parameters
    ----------
    raw
        The parsed YAML document.
    env
        Environment for ``${VAR}`` expansion; defaults to ``os.environ``.
    source
        Where the mapping came from (a file name), for error messages.

    Raises
    ------
    ConfigError
        Listing every problem, each naming its full key path.
    """
    env = os.environ if env is None else env
    errors: list[str] = []
    if raw is None:
        raise ConfigError(
            ["the configuration is empty; at least features.fields is required"], source
        )
    cfg = _build(Config, dict(raw) if isinstance(raw, Mapping) else raw, "", env, errors)
    cfg = _cross_checks(cfg, env, errors)
    if errors:
        raise ConfigError(errors, source)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys (PyYAML silently keeps the last)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {seen[key]}); keep one",
                    key_node.start_mark,
                )
            seen[key] = line
        except TypeError:
            pass
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config(path: str | os.PathLike, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML configuration file.

    Raises
    ------
    ConfigError
        The file cannot be read, is not valid YAML, or fails validation.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror or exc}"], path) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"the file is not UTF-8 text ({exc})"], path) from exc
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], path) from exc
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError([f"the top level must be a mapping of sections, got {_show(raw)}"], path)
    return parse_config(raw, env=env, source=path)
