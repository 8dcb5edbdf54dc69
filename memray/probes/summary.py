"""Read the scored probe sets: a per-probe C_T table, the layers where each probe is detected, and which layers to
read for low-level and for semantic copying.

Detection: probe ``p`` is *detected* at layer ℓ when its C_T there is negative and its Holm-adjusted p (over the
probe set's layers, ``p_holm`` of ``ct_scores``) is below ``alpha``. The recommendation (:func:`recommend`) uses
three groups of probes, after He et al. (2024), whose trained ViT detects rotation, block shuffling and
downsampling in the first layers only:

- low-level probes :data:`LOW_LEVEL` (rotated, shuffled, downsampled): the content is destroyed, pixel statistics
  survive. *Low-level layers* are the layers where any of them is detected.
- content-preserving probes :data:`CONTENT` (flipped, cropped, noisy): the object survives, the pixels move.
  *Semantic layers* are the layers where one of them is detected and no low-level probe is. When there is none,
  the fallback is the layer where the content-preserving probes' mean C_T is lowest relative to the low-level
  probes' mean C_T, provided it is lower there (a weaker, relative reading).
- anchors :data:`ANCHORS` (copies, near_copies): should be detected at every layer; a layer where they are not
  is too weak (encoder or sample size) for the absence of a detection to mean anything. ``near_copies`` (σ = 4
  grey levels) preserves the content too, but it is nearly pixel-identical: a healthy encoder detects it at every
  layer, so it is an anchor and not evidence of semantic reading (counted there, it would make every layer without
  a low-level detection "semantic").

When every layer detects the same low-level and content-preserving probes the encoder shows *no separation* (a
randomly initialised ViT: flat curves) and no semantic layers are named.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from memray import installed_version
from memray.io import schema
from memray.io.storage import join, open_output, write_json
from memray.probes.config import PROBE_DEFAULTS, PROBE_NAMES

log = logging.getLogger(__name__)

LOW_LEVEL: tuple[str, ...] = ("rotated", "shuffled", "downsampled")
CONTENT: tuple[str, ...] = ("flipped", "cropped", "noisy")
ANCHORS: tuple[str, ...] = ("copies", "near_copies")


def _order(probe: str) -> tuple[int, str]:
    return (PROBE_NAMES.index(probe) if probe in PROBE_NAMES else len(PROBE_NAMES), probe)


def probe_table(ct_scores: pd.DataFrame, probe_sets: dict[str, str]) -> pd.DataFrame:
    """The ``ct_scores`` rows of the probe sets with exactly ``schema.PROBES_SCHEMA``'s columns.

    ``probe_sets``: generated-set name → probe name (``{"probe_rotated": "rotated"}``). Rows are sorted by probe
    (registry order) then layer; ``n`` is the set's ``n_gen``.
    """
    rows = ct_scores[ct_scores[schema.GEN_SET].isin(list(probe_sets))]
    if missing := sorted(set(probe_sets) - set(rows[schema.GEN_SET])):
        log.warning("probe sets without C_T rows: %s", ", ".join(missing))
    out = pd.DataFrame(
        {
            schema.PROBE: rows[schema.GEN_SET].map(probe_sets).astype(str),
            schema.LAYER: rows[schema.LAYER].astype(np.int32),
            schema.CT: rows[schema.CT].astype(np.float64),
            schema.P_VALUE: rows[schema.P_VALUE].astype(np.float64),
            schema.CI_LOW: rows[schema.CI_LOW].astype(np.float64),
            schema.CI_HIGH: rows[schema.CI_HIGH].astype(np.float64),
            schema.N: rows[schema.N_GEN].astype(np.int64),
        }
    )
    out = out.assign(_o=out[schema.PROBE].map(_order)).sort_values(["_o", schema.LAYER], kind="stable")
    return out.drop(columns="_o").reset_index(drop=True)[schema.PROBES_SCHEMA.names]


def _fmt(layers: list[int]) -> str:
    """``[1, 2, 3, 7]`` → ``"1–3, 7"``."""
    runs: list[list[int]] = []
    for layer in sorted(layers):
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}–{r[-1]}" for r in runs)


def _mean_ct(table: pd.DataFrame, probes: list[str]) -> pd.Series:
    """Mean C_T over ``probes`` per layer (NaN where none is defined)."""
    rows = table[table[schema.PROBE].isin(probes)]
    return rows.groupby(schema.LAYER)[schema.CT].mean()


def _semantic(
    table: pd.DataFrame, detected: dict[str, list[int]], layers: list[int], low: list[str], content: list[str]
) -> tuple[list[int], str]:
    """(semantic layers, the sentence saying why) under the rule of the module docstring."""
    low_layers = {layer for p in low for layer in detected[p]}
    strict = sorted({layer for p in content for layer in detected[p]} - low_layers)
    if strict:
        names = sorted({p for p in content if set(detected[p]) & set(strict)}, key=_order)
        per = "; ".join(f"{p} at {_fmt(sorted(set(detected[p]) & set(strict)))}" for p in names)
        return strict, (
            f"Content-preserving probes are detected where no low-level probe is ({per}): read layers "
            f"{_fmt(strict)} for semantic copying (the content kept, the pixels changed); the other layers miss "
            "such copies."
        )
    if not low or not content:
        return [], "Without both low-level and content-preserving probes no semantic layers can be named."
    contrast = (_mean_ct(table, content) - _mean_ct(table, low)).dropna()
    if contrast.empty or contrast.min() >= 0:
        return [], (
            "At no layer are the content-preserving probes closer to the training set than the low-level ones, "
            "so no layer reads semantic copying better than low-level copying."
        )
    best = int(contrast.idxmin())
    return [best], (
        "No layer detects content-preserving probes without low-level ones; their C_T is lowest relative to the "
        f"low-level probes at layer {best}, a weaker, relative indication of where semantic copying shows."
    )


def _per_probe(
    table: pd.DataFrame,
    ct_scores: pd.DataFrame,
    probe_sets: dict[str, str],
    alpha: float,
    params: dict[str, dict[str, Any]] | None,
) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """(probe → its summary entry, probe → its detected layers): detected = ``p_holm < alpha`` and ``C_T < 0``."""
    sets = {probe: name for name, probe in probe_sets.items()}
    holm = ct_scores[[schema.GEN_SET, schema.LAYER, schema.P_HOLM]].assign(
        **{schema.PROBE: ct_scores[schema.GEN_SET].map(probe_sets), schema.LAYER: ct_scores[schema.LAYER].astype(int)}
    )
    merged = table.assign(**{schema.LAYER: table[schema.LAYER].astype(int)}).merge(
        holm[[schema.PROBE, schema.LAYER, schema.P_HOLM]], on=[schema.PROBE, schema.LAYER], how="left"
    )
    hit = (merged[schema.P_HOLM] < alpha) & (merged[schema.CT] < 0)
    names = sorted(table[schema.PROBE].unique(), key=_order)
    probes: dict[str, Any] = {}
    detected: dict[str, list[int]] = {}
    for p in names:
        rows = merged[merged[schema.PROBE] == p]
        detected[p] = sorted(int(v) for v in rows.loc[hit[rows.index], schema.LAYER])
        defined = rows.dropna(subset=[schema.CT])
        low_row = defined.loc[defined[schema.CT].idxmin()] if not defined.empty else None
        probes[p] = {
            "set": sets.get(p, p),
            "params": dict((params or {}).get(p, PROBE_DEFAULTS.get(p, {}))),
            "n": int(rows[schema.N].max()),
            "detected_layers": detected[p],
            "min_ct": None if low_row is None else float(low_row[schema.CT]),
            "min_ct_layer": None if low_row is None else int(low_row[schema.LAYER]),
        }
    return probes, detected


def _low_level_text(table: pd.DataFrame, low: list[str], low_layers: list[int], alpha: float) -> str:
    """The sentence on where the low-level probes are detected (and where most strongly: lowest mean C_T)."""
    if not low:
        return "No low-level probe was scored."
    if low_layers:
        strongest = _mean_ct(table, low).loc[low_layers].idxmin()
        return (
            f"Low-level probes are detected at layers {_fmt(low_layers)} (most strongly at layer {int(strongest)}): "
            "read these layers for low-level copying (pixels, textures)."
        )
    return f"No low-level probe is detected at any layer (alpha={alpha:g})."


def _semantic_or_flat(
    table: pd.DataFrame, detected: dict[str, list[int]], layers: list[int], low: list[str], content: list[str]
) -> tuple[list[int], str]:
    """(semantic layers, why): none when every layer detects the same probes (no separation), else :func:`_semantic`."""
    patterns = {layer: frozenset(p for p in low + content if layer in detected[p]) for layer in layers}
    if len(set(patterns.values())) > 1:
        return _semantic(table, detected, layers, low, content)
    seen = sorted(next(iter(patterns.values()), frozenset()), key=_order)
    which = (
        f"Every layer detects the same low-level and content-preserving probes ({', '.join(seen)})"
        if seen
        else "No layer detects a low-level or content-preserving probe"
    )
    return [], (
        f"{which}: the probes show no separation between this encoder's layers (a randomly initialised ViT looks "
        "like this), so no layer reads low-level or semantic copying better than another."
    )


def _anchor_text(
    anchors: list[str], detected: dict[str, list[int]], layers: list[int], n: dict[str, int]
) -> str | None:
    """The warning for the first anchor probe missed at some layer (``n``: probe → sample size), or ``None``."""
    for a in anchors:
        if missed := sorted(set(layers) - set(detected[a])):
            if len(missed) == len(layers):
                return (
                    f"The anchor '{a}' is not detected at any layer: the encoder or the sample (n={n[a]}) is too weak "
                    "to see even these, so nothing can be concluded from the probes."
                )
            return (
                f"The anchor '{a}' is not detected at layers {_fmt(missed)}: there the encoder or the sample "
                f"(n={n[a]}) is too weak, and a probe that is not detected is no evidence."
            )
    return None


def recommend(
    table: pd.DataFrame,
    ct_scores: pd.DataFrame,
    probe_sets: dict[str, str],
    alpha: float,
    params: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Per probe its detected layers and lowest C_T, and which layers to read for low-level / semantic copying.

    Args:
        table: :func:`probe_table` output. ``ct_scores``: the scores it came from (for ``p_holm``).
        probe_sets: generated-set name → probe name. ``alpha``: detection level (e.g. ``ct.alpha``).
        params: probe → parameters it was built with (default: the registry defaults).

    Returns:
        ``{"alpha", "probes": {name: {"set", "params", "n", "detected_layers", "min_ct", "min_ct_layer"}},
        "recommendation": {"low_level_layers", "semantic_layers", "text"}}``, JSON-ready (undefined → ``None``).
    """
    probes, detected = _per_probe(table, ct_scores, probe_sets, alpha, params)
    layers = sorted(int(v) for v in table[schema.LAYER].unique())
    low, content, anchors = ([p for p in group if p in probes] for group in (LOW_LEVEL, CONTENT, ANCHORS))
    low_layers = sorted({layer for p in low for layer in detected[p]})
    semantic, why = _semantic_or_flat(table, detected, layers, low, content)
    text = [_low_level_text(table, low, low_layers, alpha), why]
    if anchor := _anchor_text(anchors, detected, layers, {a: probes[a]["n"] for a in anchors}):
        text.append(anchor)
    return {
        "alpha": float(alpha),
        "probes": probes,
        "recommendation": {"low_level_layers": low_layers, "semantic_layers": semantic, "text": " ".join(text)},
    }


def write_probe_outputs(
    table: pd.DataFrame,
    summary: dict[str, Any],
    out_url: str,
    storage_options: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Write ``probes.parquet`` (the table, with its metadata JSON under ``schema.META_KEY``) and ``probes.json``.

    ``metadata``: extra keys for the Parquet metadata (e.g. the job's config). Returns ``{"probes", "summary"}`` URLs.
    """
    meta = {
        "table": "probes",
        "memray_version": installed_version(),
        "alpha": summary["alpha"],
        "probe_sets": {p: {k: v[k] for k in ("set", "params", "n")} for p, v in summary["probes"].items()},
        **(metadata or {}),
    }
    sch = schema.PROBES_SCHEMA.with_metadata({schema.META_KEY: json.dumps(meta, sort_keys=True, default=str).encode()})
    arrow = pa.Table.from_pandas(table[sch.names], schema=sch, preserve_index=False)
    arrow = arrow.replace_schema_metadata(sch.metadata)  # only memray's metadata, not pandas'
    urls = {"probes": join(out_url, schema.PROBES_FILE), "summary": join(out_url, schema.PROBES_SUMMARY_FILE)}
    with open_output(urls["probes"], storage_options) as fh:
        pq.write_table(arrow, fh, compression="zstd")
    write_json(urls["summary"], summary, storage_options)
    return urls
