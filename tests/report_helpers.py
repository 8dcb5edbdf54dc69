"""A synthetic run folder with the exact table schemas (tests of the report), and an HTML page parser."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from memray.io import schema

LAYERS = [1, 2, 3, 4]
K = 3  # training neighbours per generated sample in copies.parquet
PER_SET = 5  # generated samples per set in copies.parquet
SHOWN = 4  # copies_per_set used by the tests
CT = {  # set → C_T per layer; copier strongest at layer 3, local at layer 2
    "copier": [-1.0, -4.0, -6.0, -2.5],
    "clean": [0.2, -0.1, 0.4, 0.1],
    "local": [-0.5, -1.2, -0.8, -0.3],
    "probe_flipped": [-8.0, -7.0, -3.0, -1.0],
}
VERDICTS = {  # verdict, p_holm, test, n_tests, layers, replication_layers, localized, flagged_cells
    "copier": (schema.VERDICT_COPYING, 1e-8, "concentration:L-1", 20, [2, 3, 4], [-1, 3], False, []),
    "clean": (schema.VERDICT_NONE, 0.6, "ct:L1", 20, [], [], False, []),
    "local": (schema.VERDICT_CLOSER, 0.02, "cell:L2:c1", 20, [], [], True, ["L2:c1"]),
    "probe_flipped": (schema.VERDICT_COPYING, 1e-12, "replication:L1", 20, [1, 2, 3], [1], False, []),
}
LEAKED = 2  # training images of copier listed in memorized.parquet at layer 3 (q < 0.05), each with 2 samples
GALLERY_SETS = ["copier", "local", "clean"]  # non-probe sets, copying first, then by most negative C_T
# copier at its strongest layer (3): test quantiles / distances of g0..g4 → expected order g3, g1, g2, g0
COPIER_Q3 = [0.5, 0.001, 0.2, 0.001, 0.9]
COPIER_D3 = [0.30, 0.02, 0.10, 0.01, 0.50]
MISSING_SOURCE_SET = "clean"


def write_table(path: Path, records: list[tuple], sch: pa.Schema) -> None:
    """Rows given as tuples in the schema's column order, written with exactly that schema."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(zip(*records, strict=True)) if records else [[] for _ in sch]
    pq.write_table(pa.Table.from_pydict(dict(zip(sch.names, columns, strict=True)), schema=sch), path)


def _png(path: Path, value: int, rng: np.random.Generator) -> None:
    img = np.clip(value + rng.integers(-30, 30, size=(28, 28, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)


def _copies(root: Path, prefix: str, n_train: int, rng: np.random.Generator) -> list[tuple]:
    """COPIES rows at layers 2 and 3 (+ the generated PNGs); copier's layer-3 quantiles are COPIER_Q3."""
    rows = []
    for si, s in enumerate(CT):
        for g in range(PER_SET):
            _png(root / "img" / f"{s}_g{g}.png", 40 * si + 20 * g, rng)
            for layer in (2, 3):
                q3 = COPIER_Q3[g] if s == "copier" else 0.1 * (g + 1)
                q, d = (q3, COPIER_D3[g]) if layer == 3 else (COPIER_Q3[::-1][g], 0.2)
                for rank in range(1, K + 1):
                    t = (7 * si + 3 * g + rank) % n_train
                    src = f"{prefix}/train.npz#{t}"
                    if s == MISSING_SOURCE_SET and g == 1 and rank == 2:  # shown at clean's layer 2
                        src = f"{prefix}/img/missing.png"
                    gen_src = f"{prefix}/img/{s}_g{g}.png"
                    view = "hflip" if (s, g, rank) == ("copier", 3, 1) else "identity"
                    rows.append(
                        (s, f"{s}/g{g}.png", layer, rank, f"train.npz/{t}", d * rank, min(1, q * rank), gen_src, src,
                         view)
                    )  # fmt: skip
    return rows


def _run_json(prefix: str, labels: dict[str, str | None]) -> dict:
    counts = {"copier": {"rows_read": 7, "rows_embedded": 5, "rows_reported": 2, "files_skipped": 0}}
    return {
        "config": {"cells": 3, "min_gen_per_cell": 2, "seed": 7, "alpha": 0.05},
        "method": {"ct": "weighted Z"},
        "job_config": {
            "embed": {"model": "vit_tiny_patch16_224", "weights": None, "random_init": True},
            "ct": {"seed": 7},
            "fingerprint": {"seed": 3},
        },
        "preprocessing": {"preset": "paper", "transform": "Resize(32)"},
        "memray_version": "9.9.9",
        "stats": {
            "counts": counts,
            "seconds": 12.5,
            "nodes": [{"host": "node-a", "gpus": 1}],
            "score": {"seconds": 9.0, "stages": {"fit": 6.25, "statistic": 1.5, "bootstrap": 0.0}},
        },
        "labels": labels,
        "inputs": {"train": [f"{prefix}/train.npz"]},
        "layers": LAYERS,
        "gen_sets": list(CT),
    }


def _probes(root: Path) -> None:
    p, ct = [1e-8, 1e-7, 1e-3, 0.1], CT["probe_flipped"]
    rows = [("flipped", ly, ct[i], p[i], ct[i] - 1, ct[i] + 1, PER_SET) for i, ly in enumerate(LAYERS)]
    write_table(root / schema.PROBES_FILE, rows, schema.PROBES_SCHEMA)
    flipped = {"set": "probe_flipped", "params": {}, "n": PER_SET, "detected_layers": [1, 2, 3], "min_ct": -8.0,
               "min_ct_layer": 1}  # fmt: skip
    text = "Use layers 1-2 for pixel copies, 3-4 for semantic ones."
    rec = {"low_level_layers": [1, 2], "semantic_layers": [3, 4], "text": text}
    (root / schema.PROBES_SUMMARY_FILE).write_text(json.dumps({"alpha": 0.05, "probes": {"flipped": flipped},
                                                               "recommendation": rec}))  # fmt: skip


def _evidence(root: Path, prefix: str) -> None:
    """replication.parquet (every set and layer; copier replicates at layer 3) and memorized.parquet (copier's
    LEAKED training images at layer 3, plus one image that is not significant)."""
    rep = [(s, ly, "identity,hflip", PER_SET, 30, 4 if (s, ly) == ("copier", 3) else 0,
            0.8 if (s, ly) == ("copier", 3) else 0.0, 0.01, 0.79 if (s, ly) == ("copier", 3) else 0.0, 0.4, 0.95,
            1e-6 if (s, ly) == ("copier", 3) else 1.0, 0.01, 0.005, 3, 0, 2 if s == "copier" else 0,
            0.01 if s == "copier" else 1.0) for s in CT for ly in LAYERS]  # fmt: skip
    write_table(root / schema.REPLICATION_FILE, rep, schema.REPLICATION_SCHEMA)
    mem = [("copier", 3, f"train.npz/{t}", f"{prefix}/train.npz#{t}", 2, 0, 0.7, 0.01, q,
            ["copier/g1.png", "copier/g3.png"], [0.01, 0.02]) for t, q in ((5, 0.02), (6, 0.03), (7, 0.4))]  # fmt: skip
    write_table(root / schema.MEMORIZED_FILE, mem, schema.MEMORIZED_SCHEMA)


def make_run(root: Path, source_prefix: str | None = None, probes: bool = True) -> Path:
    """A complete synthetic run folder under ``root``; sources point at ``source_prefix`` (default: ``root``)."""
    rng = np.random.default_rng(0)
    prefix = source_prefix or str(root)
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "evaluation").mkdir()
    train = rng.integers(0, 255, size=(40, 28, 28), dtype=np.uint8)
    np.savez(root / "train.npz", images=train)
    ct = [
        (s, ly, v, 40, 30, PER_SET, 2, 3, 10.0**v, min(1, 4 * 10.0**v), v - 0.8, v + 0.8, v - 0.3, v + 0.3)
        for s, vals in CT.items()
        for ly, v in zip(LAYERS, vals, strict=True)
    ]
    write_table(root / schema.CT_SCORES_FILE, ct, schema.CT_SCORES_SCHEMA)
    cells = [
        (s, ly, c, vals[ly - 1] + c - 1, 20, 10, 6, c < 2, schema.CELL_OK if c < 2 else schema.CELL_FEW_GEN, 0.05,
         0.01 if (s, ly, c) == ("local", 2, 1) else 0.5)
        for s, vals in CT.items() for ly in LAYERS for c in range(3)
    ]  # fmt: skip
    write_table(root / schema.CT_CELLS_FILE, cells, schema.CT_CELLS_SCHEMA)
    advice = {"local": "add ≥ 200 more generated images"}
    verdicts = [(s, *v[:1], 0.05, *v[1:], PER_SET, advice.get(s, "")) for s, v in VERDICTS.items()]
    write_table(root / schema.VERDICTS_FILE, verdicts, schema.VERDICTS_SCHEMA)
    nb = []
    for ly in LAYERS:
        for role, s, count, scale in [(schema.ROLE_TEST, None, 30, 1.0)] + [(schema.ROLE_GEN, s, 20, 0.3) for s in CT]:
            d = rng.lognormal(np.log(0.1 * scale), 0.5, size=count)
            nb += [(role, s, f"{s or 'test'}/{i}", ly, i % 3, f"train.npz/{i}", float(d[i])) for i in range(count)]
    write_table(root / schema.NEIGHBORS_FILE, nb, schema.NEIGHBORS_SCHEMA)
    write_table(root / schema.COPIES_FILE, _copies(root, prefix, len(train), rng), schema.COPIES_SCHEMA)
    _evidence(root, prefix)
    errors = [
        ("copier", "copier/x.png", "decode_error", "bad <png>"),
        ("copier", "copier/y.png", "decode_error", "bad"),
    ]
    errors.append(("train", "t/z", "too_large", "big"))
    write_table(root / schema.ERRORS_FILE, errors, schema.ERRORS_SCHEMA)
    labels = {"copier": "model_a", "clean": "model_b", "local": None, "probe_flipped": None}
    fp = [(s, labels[s], 0, ly, v) for s, vals in CT.items() for ly, v in zip(LAYERS, vals, strict=True)]
    write_table(root / schema.FINGERPRINTS_FILE, fp, schema.FINGERPRINTS_SCHEMA)
    att = [("C_T curve (1nn, alpha=0.5)", "local", None, "model_a", 0.8, "model_b", 0.3)]
    write_table(root / schema.ATTRIBUTION_FILE, att, schema.ATTRIBUTION_SCHEMA)
    fid = [("FID-nearest (layer 3)", "local", None, "model_b", 12.5, "model_a", 1.5)]  # disagrees with the curve
    write_table(root / "attribution_fid.parquet", fid, schema.ATTRIBUTION_SCHEMA)
    acc = {
        "method": ["C_T curve", "FID-nearest (layer 3)"], "correct": [2, 4], "total": [4, 4], "accuracy": [0.5, 1.0],
        "ci_low": [0.15, 0.51], "ci_high": [0.85, 1.0], "runs": [2, 2], "run_ci_low": [0.0, 1.0], "run_ci_high": [1, 1],
    }  # fmt: skip
    pd.DataFrame(acc).to_csv(root / "evaluation/accuracy.csv", index=False)
    comp = {
        "method": ["FID-nearest (layer 3)"], "reference": ["C_T curve"], "accuracy": [1.0], "reference_accuracy": [0.5],
        "diff": [0.5], "diff_low": [0.0], "diff_high": [1.0], "only_method": [2], "only_reference": [0],
        "p_mcnemar": [0.5],
    }  # fmt: skip
    pd.DataFrame(comp).to_csv(root / "evaluation/comparison.csv", index=False)
    open_set = {
        "family": ["model_a", "model_b", "all"], "threshold": [0.4, 0.5, 0.45], "absent_queries": [2, 2, 4],
        "absent_unknown": [2, 1, 3], "present_queries": [2, 2, 4], "present_unknown": [0, 1, 1],
    }  # fmt: skip
    pd.DataFrame(open_set).to_csv(root / "evaluation/open_set.csv", index=False)
    conf = {"true_label": ["model_a", "model_b"], "model_a": [1, 0], "model_b": [0, 1]}
    pd.DataFrame(conf).to_csv(root / "evaluation/confusion.csv", index=False)
    if probes:
        _probes(root)
    (root / schema.RUN_FILE).write_text(json.dumps(_run_json(prefix, labels)))
    return root


VOID = {"img", "meta", "br", "hr", "link", "input", "col", "source", "wbr"}


class Page(HTMLParser):
    """Collects section ids, thumbnails, text and table rows per section; checks every tag is closed in order."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.thumbs: dict[str, list[dict[str, str]]] = {}
        self.text: dict[str, str] = {}
        self.rows: dict[str, list[list[str]]] = {}  # section → table body rows (cell texts)
        self.external: list[str] = []
        self._cell: list[str] | None = None
        self.open: list[str] = []  # the stack of open elements
        self.mismatched: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag not in VOID:
            self.open.append(tag)
        if tag == "section":
            self.sections.append(a["id"])
            self.thumbs[a["id"]], self.text[a["id"]], self.rows[a["id"]] = [], "", []
        if tag == "tr":
            self.rows[self.sections[-1]].append([])
        if tag in ("td", "th"):
            self._cell = []
        if tag == "img" and "thumb" in a.get("class", "").split():
            self.thumbs[self.sections[-1]].append(a)
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith(("data:", "#")):
                self.external.append(a[key])
        if tag == "link":
            self.external.append(a.get("href", ""))

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.mismatched.append(tag)
        if tag == "td" and self._cell is not None:
            self.rows[self.sections[-1]][-1].append("".join(self._cell).strip())
        if tag in ("td", "th"):
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self.sections:
            self.text[self.sections[-1]] += data
        if self._cell is not None:
            self._cell.append(data)

    def table_rows(self, section: str) -> list[list[str]]:
        """Body rows (with at least one td) of every table in ``section``."""
        return [r for r in self.rows[section] if r]


def parse(path: Path | str) -> Page:
    p = Page()
    p.feed(Path(path).read_text(encoding="utf-8"))
    p.close()
    assert p.mismatched == [] and p.open == [], (p.mismatched[:5], p.open[:5])  # well-formed: every tag closed
    return p
