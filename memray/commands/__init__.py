"""Subcommands of the memray CLI (one module each: add_parser + run), and the option parsing they share."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from memray.embedding.config import POOLINGS

INPUT_FIELDS = ("pooling", "mean", "std", "resize", "crop")
"""``embed`` fields with a flag of their own in ``memray embed`` and ``memray audit`` (same names)."""


def parse_key_values(items: list[str], option: str) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → ``{"a.b": 1, "c": "x"}``; values are parsed as YAML (so JSON works too)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{option} {item!r}: use KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def floats(text: str) -> tuple[float, ...]:
    """``"0.485,0.456,0.406"`` → ``(0.485, 0.456, 0.406)`` (argparse type of ``--mean``/``--std``)."""
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use comma-separated numbers, one per channel") from None


def add_encoder_input_flags(p: argparse.ArgumentParser) -> None:
    """``--pooling``, ``--mean``, ``--std``, ``--resize``, ``--crop``: the ``embed`` fields of the same names."""
    auto = "cls, mean of patch tokens, or auto (cls where the model has a class token, else mean); default: cls"
    p.add_argument("--pooling", choices=POOLINGS, help=auto)
    p.add_argument("--mean", type=floats, metavar="M[,M,M]", help="per-channel normalisation mean (over the preset's)")
    p.add_argument("--std", type=floats, metavar="S[,S,S]", help="per-channel normalisation std (over the preset's)")
    p.add_argument("--resize", type=int, metavar="PX", help="short side before the centre crop (over the preset's)")
    crop = "side of the centre crop fed to the encoder (default: the size the model is built for)"
    p.add_argument("--crop", type=int, metavar="PX", help=crop)


def encoder_input_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``embed`` fields given by :func:`add_encoder_input_flags` (only those given)."""
    out = {k: getattr(args, k) for k in INPUT_FIELDS if getattr(args, k, None) is not None}
    if "pooling" in out:
        out["pooling"] = (out["pooling"],)
    return out
