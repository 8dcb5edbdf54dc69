"""C_T-layer curve tables: read every accepted format into one long form, and write galleries/fingerprints.

Accepted inputs (one curve = one run × subset):

- memray ``fingerprints.parquet``: ``gen_set, label, subset, layer, ct`` (``gen_set`` is the run).
- long CSV/Parquet: ``label, run, layer, ct`` [``subset``, ``split``, ``name``].
- wide CSV/Parquet: ``label, run, l1, …, lN`` (or ``layer_1 …``) [``subset``, ``split``, ``name``].
- the authors' text files: ``NAME [v1, …, v12]`` or ``NAME: [...]`` per line; label = the name before the first
  ``_``; layers 1…N; names ending ``_train_batch`` → gallery, ``_test_batch`` → query (their Ffull/Fsmall
  split files); a name repeated in a file gets ``#1``, ``#2``… in file order.

``split`` (optional) is ``gallery`` or ``query``. The canonical long form has columns
``name, run, subset, label, split, layer, ct, fd_test``; ``name`` is ``run`` when the run has one curve, else
``run#subset``. ``fd_test`` (optional in every table format; NaN when absent) is the curve's FD-to-test profile at
that layer (:mod:`memray.fingerprint.fd_profile`): a table either gives it for every curve and layer or not at all.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from memray.fingerprint.fd_profile import FD_TEST
from memray.fingerprint.match import Gallery
from memray.io import schema
from memray.io.storage import open_output, open_url

log = logging.getLogger(__name__)

NAME = "name"
RUN = "run"
SPLIT = "split"
SPLIT_GALLERY = "gallery"
SPLIT_QUERY = "query"
CURVE_COLUMNS = (NAME, RUN, schema.SUBSET, schema.LABEL, SPLIT, schema.LAYER, schema.CT, FD_TEST)
GALLERY_SCHEMA = pa.schema(
    [
        (NAME, pa.string()),
        (RUN, pa.string()),
        (schema.LABEL, pa.string()),
        (schema.LAYER, pa.int32()),
        (schema.CT, pa.float64()),
    ]
)
_WIDE = re.compile(r"^(?:l|layer_?)(\d+)$", re.IGNORECASE)
_TEXT = re.compile(r"^(\S+?):?\s*\[(.*)\]\s*$")


class CurveFileError(ValueError):
    """A curve file is malformed; the message names the file, the row/line and what to do."""


def read_curves(url: str) -> pd.DataFrame:
    """Read curves from any accepted format into the canonical long DataFrame (see the module docstring)."""
    suffix = Path(str(url)).suffix.lower()
    try:
        with open_url(url, "rb") as fh:
            if suffix == ".parquet":
                df = pd.read_parquet(fh)
            elif suffix == ".csv":
                df = pd.read_csv(fh)
            else:
                return _read_text(fh.read().decode(), str(url))
    except FileNotFoundError as exc:
        raise CurveFileError(f"{url}: file not found") from exc
    return normalize_curves(df, str(url), csv=suffix == ".csv")


def _read_text(text: str, source: str) -> pd.DataFrame:
    """The authors' ``NAME [v1, …]`` / ``NAME: [...]`` lines → canonical long form."""
    entries = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _TEXT.match(line)
        if m is None:
            raise CurveFileError(f"{source}: line {lineno}: expected 'NAME [v1, v2, ...]', got {line[:60]!r}")
        try:
            values = [float(v) for v in m.group(2).split(",") if v.strip()]
        except ValueError as exc:
            raise CurveFileError(f"{source}: line {lineno}: non-numeric C_T value ({exc})") from None
        if not values:
            raise CurveFileError(f"{source}: line {lineno}: empty curve")
        entries.append((lineno, m.group(1), values))
    if not entries:
        raise CurveFileError(f"{source}: no curves found")
    counts = pd.Series([e[1] for e in entries]).value_counts()
    seen: dict[str, int] = {}
    marks = [e[1].endswith(("_train_batch", "_test_batch")) for e in entries]
    if any(marks) and not all(marks):
        lineno = entries[marks.index(False)][0]
        raise CurveFileError(f"{source}: line {lineno}: mixes split lines (*_train_batch/*_test_batch) and others")
    rows = []
    for lineno, name, values in entries:
        if len(values) != len(entries[0][2]):
            raise CurveFileError(
                f"{source}: line {lineno}: {len(values)} values, the first curve has {len(entries[0][2])}"
            )
        seen[name] = seen.get(name, 0) + 1
        run = f"{name}#{seen[name]}" if counts[name] > 1 else name
        split = None if not marks[0] else (SPLIT_GALLERY if name.endswith("_train_batch") else SPLIT_QUERY)
        label = name.split("_", 1)[0]
        rows += [(run, run, 0, label, split, layer, v, np.nan) for layer, v in enumerate(values, 1)]
    return _typed(pd.DataFrame(rows, columns=list(CURVE_COLUMNS)))


def normalize_curves(df: pd.DataFrame, source: str = "", csv: bool = False) -> pd.DataFrame:
    """A long, wide or fingerprints table → the canonical long form, validated.

    Errors name the place as ``line N`` of a CSV file (header = line 1) or ``row N`` (1-based) of a table.
    """
    df = df.rename(columns={schema.GEN_SET: RUN}).copy()
    df.insert(0, "_row", [f"line {i + 2}" if csv else f"row {i + 1}" for i in range(len(df))])
    if RUN not in df.columns:
        raise CurveFileError(f"{source}: no 'run' (or 'gen_set') column; columns are {list(df.columns)[1:]}")
    if not {schema.LAYER, schema.CT} <= set(df.columns):
        wide = {c: int(m.group(1)) for c in df.columns if (m := _WIDE.match(str(c)))}
        if not wide:
            raise CurveFileError(
                f"{source}: neither long ('layer', 'ct') nor wide ('l1'… or 'layer_1'…) curve columns found"
            )
        keep = [c for c in df.columns if c not in wide]
        df = df.melt(id_vars=keep, value_vars=list(wide), var_name=schema.LAYER, value_name=schema.CT)
        df[schema.LAYER] = df[schema.LAYER].map(wide)
    for col, default in ((schema.LABEL, None), (SPLIT, None), (schema.SUBSET, 0), (NAME, None), (FD_TEST, np.nan)):
        if col not in df.columns:
            df[col] = default
    ct = pd.to_numeric(df[schema.CT], errors="coerce")
    bad = df[ct.isna() & df[schema.CT].notna()]
    if len(bad):
        r = bad.iloc[0]
        raise CurveFileError(f"{source}: {r['_row']}: ct {r[schema.CT]!r} is not a number (use NaN or empty)")
    df[schema.CT] = ct
    fd = pd.to_numeric(df[FD_TEST], errors="coerce")
    if fd.notna().any() and not np.isfinite(fd.to_numpy(np.float64)).all():
        r = df[~np.isfinite(fd.to_numpy(np.float64))].iloc[0]
        raise CurveFileError(
            f"{source}: {r['_row']}: fd_test {r[FD_TEST]!r}; give a finite number on every row or drop the column"
        )
    df[FD_TEST] = fd
    layer = pd.to_numeric(df[schema.LAYER], errors="coerce")
    if layer.isna().any() or (layer != layer.round()).any():
        r = df[layer.isna() | (layer != layer.round())].iloc[0]
        raise CurveFileError(f"{source}: {r['_row']}: layer {r[schema.LAYER]!r} is not an integer")
    df[schema.LAYER] = layer.astype(int)
    if df[RUN].isna().any():
        raise CurveFileError(f"{source}: {df[df[RUN].isna()].iloc[0]['_row']}: empty run name")
    df[RUN] = df[RUN].astype(str)
    df[schema.SUBSET] = pd.to_numeric(df[schema.SUBSET], errors="coerce").fillna(0).astype(int)
    split = df[SPLIT].astype(object).where(df[SPLIT].notna(), None)
    split = split.map(lambda s: s if s is None else str(s).strip().lower())
    if split.notna().any():
        bad = df[~split.isin([SPLIT_GALLERY, SPLIT_QUERY])]
        if len(bad):
            r = bad.iloc[0]
            raise CurveFileError(f"{source}: {r['_row']}: split {r[SPLIT]!r}; use 'gallery' or 'query'")
    df[SPLIT] = split
    df[schema.LABEL] = df[schema.LABEL].astype(object).where(df[schema.LABEL].notna(), None)
    df[schema.LABEL] = df[schema.LABEL].map(lambda s: s if s is None else str(s))
    multi = df.groupby(RUN)[schema.SUBSET].transform("nunique") > 1
    derived = df[RUN].where(~multi, df[RUN] + "#" + df[schema.SUBSET].astype(str))
    df[NAME] = df[NAME].astype(object).where(df[NAME].notna(), derived).astype(str)
    dup = df[df.duplicated([NAME, schema.LAYER], keep="first")]
    if len(dup):
        r = dup.iloc[0]
        raise CurveFileError(f"{source}: {r['_row']}: curve {r[NAME]!r} has layer {r[schema.LAYER]} twice")
    for col in (schema.LABEL, SPLIT, RUN):
        varies = df.groupby(NAME)[col].nunique(dropna=False) > 1
        if varies.any():
            raise CurveFileError(f"{source}: curve {varies.idxmax()!r} has more than one {col}; give one per curve")
    return _typed(df[list(CURVE_COLUMNS)])


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    df = df.reset_index(drop=True)
    df[schema.SUBSET] = df[schema.SUBSET].astype(np.int64)
    df[schema.LAYER] = df[schema.LAYER].astype(np.int64)
    df[schema.CT] = df[schema.CT].astype(np.float64)
    df[FD_TEST] = df[FD_TEST].astype(np.float64)
    return df


def to_gallery(df: pd.DataFrame, source: str = "") -> tuple[Gallery, np.ndarray | None]:
    """Canonical long curves → (Gallery in first-appearance order, split array (g,) or None).

    Every curve must have every layer present in the table (values may be NaN); otherwise raises naming the
    curve and its missing layers.
    """
    layers = tuple(sorted(df[schema.LAYER].unique().tolist()))
    names = list(dict.fromkeys(df[NAME].tolist()))
    wide = df.pivot(index=NAME, columns=schema.LAYER, values=schema.CT)
    have = df.groupby(NAME)[schema.LAYER].apply(set)
    for name in names:
        missing = sorted(set(layers) - have[name])
        if missing:
            raise CurveFileError(f"{source}: curve {name!r} lacks layers {missing}; every curve needs {list(layers)}")
    first = df.drop_duplicates(NAME).set_index(NAME).loc[names]
    fd = None
    if df[FD_TEST].notna().any():
        fd = df.pivot(index=NAME, columns=schema.LAYER, values=FD_TEST).loc[names, list(layers)].to_numpy(np.float64)
    gallery = Gallery(
        np.array(names, dtype=object),
        first[schema.LABEL].to_numpy(dtype=object),
        wide.loc[names, list(layers)].to_numpy(np.float64),
        layers,
        first[RUN].to_numpy(dtype=object),
        fd,
    )
    split = first[SPLIT].to_numpy(dtype=object)
    return gallery, (split if all(s is not None for s in split) else None)


def write_gallery(url: str, gallery: Gallery, metadata: dict[str, Any] | None = None) -> None:
    """Save labelled curves as a long Parquet table (``name, run, label, layer, ct`` [``fd_test``]), reusable across
    runs; ``metadata`` gets ``{"method": gallery.method}``, the method that can query it."""
    g, n_layers = len(gallery), len(gallery.layers)
    cols = {
        NAME: np.repeat(gallery.names, n_layers).astype(str),
        RUN: np.repeat(gallery.runs, n_layers).astype(str),
        schema.LABEL: [None if v is None else str(v) for v in np.repeat(gallery.labels, n_layers)],
        schema.LAYER: np.tile(np.asarray(gallery.layers, np.int32), g),
        schema.CT: gallery.curves.reshape(-1),
    }
    sch = GALLERY_SCHEMA
    if gallery.fd_test is not None:
        cols[FD_TEST], sch = gallery.fd_test.reshape(-1), sch.append(pa.field(FD_TEST, pa.float64()))
    table = pa.table(cols, schema=_with_meta(sch, {**(metadata or {}), "method": gallery.method}))
    with open_output(url) as fh:
        pq.write_table(table, fh)


def read_gallery(url: str) -> Gallery:
    """Load a gallery from any accepted curve file; every curve must be labelled."""
    gallery, _ = to_gallery(read_curves(url), str(url))
    unlabelled = [n for n, lab in zip(gallery.names, gallery.labels, strict=True) if lab is None]
    if unlabelled:
        raise CurveFileError(f"{url}: gallery curves without a label: {unlabelled[:5]}")
    return gallery


def write_fingerprints(url: str, df: pd.DataFrame, metadata: dict[str, Any] | None = None) -> None:
    """Write curves in :data:`~memray.io.schema.FINGERPRINTS_SCHEMA` (+ ``fd_test`` when ``df`` has it) with
    ``metadata`` (JSON) in the schema."""
    sch = schema.FINGERPRINTS_SCHEMA
    if FD_TEST in df.columns:
        sch = sch.append(pa.field(FD_TEST, pa.float64()))
    sch = _with_meta(sch, metadata)
    table = pa.Table.from_pandas(df[[f.name for f in sch]], schema=sch, preserve_index=False)
    with open_output(url) as fh:
        pq.write_table(table, fh)


def _with_meta(sch: pa.Schema, metadata: dict[str, Any] | None) -> pa.Schema:
    if metadata is None:
        return sch
    return sch.with_metadata({schema.META_KEY: json.dumps(metadata, sort_keys=True, default=str).encode()})
