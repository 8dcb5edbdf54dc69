"""Subcommands of the memray CLI (one module each: add_parser + run), and the option parsing they share."""

from __future__ import annotations

from typing import Any

import yaml


def parse_key_values(items: list[str], option: str) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → ``{"a.b": 1, "c": "x"}``; values are parsed as YAML (so JSON works too)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{option} {item!r}: use KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out
