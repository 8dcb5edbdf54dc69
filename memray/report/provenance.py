"""Sections ``errors`` (what was skipped, per set) and ``config`` (model, preprocessing, method, seeds, timings)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from memray.io import schema
from memray.report.context import Context
from memray.report.markup import Cell, esc, integer, kv, note, table

Section = tuple[str, str, str]
EXAMPLE_ROWS = 8
MAX_URLS = 3  # input URLs listed per set
COUNT_KEYS = ("rows_read", "rows_embedded", "rows_reported", "files_skipped")


def value(v: object) -> str:
    """A config value as HTML: text escaped, lists/dicts as compact JSON in ``<code>``."""
    if isinstance(v, dict | list | tuple):
        return f"<code>{esc(json.dumps(v, sort_keys=True, default=str))}</code>"
    return esc(v)


def errors_section(ctx: Context) -> Section:
    """Row counts per set (run.json), error counts by set × status and a few example rows."""
    counts = (ctx.run.run.get("stats") or {}).get("counts") or {}
    body = ""
    if counts:
        rows: list[list[Cell]] = [
            [esc(name), *((integer(c.get(k)), "num") for k in COUNT_KEYS)] for name, c in counts.items()
        ]
        body += table(["set", *COUNT_KEYS], rows)
    errors = ctx.run.table("errors")
    if errors is None:
        return "errors", "Errors and skipped rows", body + note(ctx.run.why_absent("errors"), True)
    if errors.empty:
        return "errors", "Errors and skipped rows", body + note("No row was skipped or failed.")
    by = errors.groupby([schema.SET, schema.STATUS]).size().reset_index(name="rows")
    body += "<h3>Failed or skipped rows by set and status</h3>"
    body += table(
        ["set", "status", "rows"], [[esc(r.set), esc(r.status), (integer(r.rows), "num")] for r in by.itertuples()]
    )
    ex = errors.head(EXAMPLE_ROWS)
    body += f"<h3>First {len(ex)} of {len(errors)} rows</h3>"
    body += table(
        ["set", "sample_id", "status", "error"],
        [[esc(r[schema.SET]), esc(r[schema.SAMPLE_ID]), esc(r[schema.STATUS]), esc(str(r[schema.ERROR])[:200])]
         for _, r in ex.iterrows()],
    )  # fmt: skip
    return "errors", "Errors and skipped rows", body


def seeds(obj: object, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``*seed*`` key in a nested config, as (dotted path, value)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            if "seed" in str(k) and not isinstance(v, dict | list):
                yield path, v
            else:
                yield from seeds(v, path)


def _inputs(inputs: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for name, urls in inputs.items():
        urls = urls if isinstance(urls, list) else [urls]
        more = f" … and {len(urls) - MAX_URLS} more" if len(urls) > MAX_URLS else ""
        out.append((str(name), "<br>".join(f"<code>{esc(u)}</code>" for u in urls[:MAX_URLS]) + esc(more)))
    return out


def _timings(stats: dict[str, Any]) -> list[tuple[str, str]]:
    out = [("started (UTC)", esc(stats.get("started_utc"))), ("total seconds", esc(_secs(stats.get("seconds"))))]
    for stage in ("embed", "score"):
        if isinstance(stats.get(stage), dict):
            out.append((f"{stage} seconds", esc(_secs(stats[stage].get("seconds")))))
    parts = (stats.get("score") or {}).get("stages") if isinstance(stats.get("score"), dict) else None
    if isinstance(parts, dict) and parts:  # seconds of each scoring stage, summed over the layers
        out.append(("score seconds by stage", esc(", ".join(f"{k} {_secs(v)}" for k, v in parts.items()))))
    nodes = [n for n in stats.get("nodes") or [] if isinstance(n, dict)]
    if nodes:
        text = "; ".join(
            f"{n.get('host')} ({n.get('gpus') or 0} GPU {n.get('accelerator_type') or ''}".strip() + ")" for n in nodes
        )
        out.append((f"nodes ({len(nodes)})", esc(text)))
    return out


def _secs(v: object) -> str:
    return "–" if not isinstance(v, int | float) else f"{v:.1f}"


def config_section(ctx: Context) -> Section:
    """Model and weights, preprocessing, layers, C_T config and method record, seeds, version, inputs, timings."""
    run = ctx.run.run
    if not run:
        why = ctx.run.absent.get(schema.RUN_FILE, "is not in this run")
        return "config", "Configuration", note(f"{schema.RUN_FILE} {why}.", True)
    job = run.get("job_config") or {}
    embed = job.get("embed") or {}
    body = ""
    if embed.get("random_init"):
        body += (
            '<div class="banner">The encoder is <b>randomly initialised</b> (embed.random_init): its layers see '
            "low-level pixel statistics only; use trained weights for semantic copies.</div>"
        )
    model = [(k, value(embed.get(k))) for k in ("model", "weights", "random_init", "model_kwargs", "pooling", "norm")]
    model += [("layers", value(run.get("layers"))), ("memray", esc(run.get("memray_version")))]
    pre = run.get("preprocessing") or {}
    left = "<h3>Encoder</h3>" + kv(model) + "<h3>Preprocessing</h3>"
    left += kv((k, value(v)) for k, v in pre.items() if k != "transform")
    if pre.get("transform"):
        left += f"<pre>{esc(pre['transform'])}</pre>"
    found = list(seeds(job or {"ct": run.get("config") or {}}))
    right = "<h3>C_T configuration</h3>" + kv((k, value(v)) for k, v in (run.get("config") or {}).items())
    right += "<h3>Seeds</h3>" + (kv((k, value(v)) for k, v in found) if found else note("none recorded", True))
    right += "<h3>Timings</h3>" + kv(_timings(run.get("stats") or {}))
    body += f'<div class="grid2"><div>{left}</div><div>{right}</div></div>'
    body += "<h3>Method record</h3>" + kv((k, value(v)) for k, v in (run.get("method") or {}).items())
    body += "<h3>Inputs</h3>" + kv(_inputs(run.get("inputs") or {}))
    return "config", "Configuration", body
