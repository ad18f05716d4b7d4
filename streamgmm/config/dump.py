"""Dumps: a :class:`Config` as plain YAML-able data, with secrets redacted for logs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from .schema import Config

_SECRET = re.compile(r"password|secret|token|sasl_plain_password|ssl_.*key.*", re.I)
REDACTED = "***"


def as_dict(cfg: Any, *, redact: bool = False) -> dict[str, Any]:
    """The configuration as plain YAML-able data (tuples become lists).

    With ``redact=True``, values of keys that look secret (password, secret,
    token, ssl_*key*) are replaced by ``"***"``.

    >>> from streamgmm.config import parse_config
    >>> cfg = parse_config({"features": {"fields": ["x"]},
    ...     "source": {"kafka": {"client": {"sasl_plain_password": "hunter2"}}}})
    >>> as_dict(cfg, redact=True)["source"]["kafka"]["client"]
    {'sasl_plain_password': '***'}
    """

    def plain(value: Any, name: str) -> Any:
        if redact and _SECRET.search(name) and value is not None:
            return REDACTED
        if is_dataclass(value):
            return {f.name: plain(getattr(value, f.name), f.name) for f in fields(value)}
        if isinstance(value, Mapping):
            return {k: plain(v, k) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return [plain(v, "") for v in value]
        return value

    return plain(cfg, "")


def redacted(cfg: Config) -> dict[str, Any]:
    """:func:`as_dict` with secrets replaced by ``"***"``: safe to log."""
    return as_dict(cfg, redact=True)
