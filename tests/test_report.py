"""The HTML report: a synthetic run folder written with the exact schemas → report.html, parsed and counted.

``make_run`` is shared with test_report_browser.py.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image
from report_helpers import (
    CT,
    GALLERY_SETS,
    LAYERS,
    LEAKED,
    PER_SET,
    SHOWN,
    K,
    Page,
    make_run,
    parse,
    write_table,
)

from memray.commands.report import parse_storage_options, run
from memray.io import schema
from memray.report import SECTION_IDS, build_report
from memray.report.markup import cell_list, closer_than
from memray.report.probes import NO_PROBES
from memray.report.thumbs import thumbnail


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Page]:
    root = make_run(tmp_path_factory.mktemp("run"))
    url = build_report(str(root), copies_per_set=SHOWN)
    assert url == str(root / schema.REPORT_FILE)
    return root, parse(url)


def test_every_section_in_order_and_self_contained(full: tuple[Path, Page]) -> None:
    _, page = full
    assert page.sections == list(SECTION_IDS)
    assert len(SECTION_IDS) == 11 and page.external == []


def test_leaked_images_beside_the_samples_on_them(full: tuple[Path, Page]) -> None:
    _, page = full
    rows = page.table_rows("leaks")
    assert [r[0] for r in rows] == GALLERY_SETS  # one replication row per shown set, copying first
    assert rows[0][2] == "3" and rows[0][3].startswith("80.0%")  # copier: its strongest layer, share below
    thumbs = page.thumbs["leaks"]  # LEAKED images (q < 0.05), each with its 2 closest generated samples
    assert len(thumbs) == LEAKED * 3 and "2 leaked training image(s)" in page.text["leaks"]
    assert "train.npz/7" not in page.text["leaks"]  # q = 0.4: not listed
    assert "view hflip" in page.text["copies"]  # the copy found under the mirror says so


def test_thumbnail_count_and_placeholder(full: tuple[Path, Page]) -> None:
    _, page = full
    assert sum(len(v) for v in page.thumbs.values()) == len(GALLERY_SETS) * SHOWN * (1 + K) + LEAKED * 3
    missing = [t for t in page.thumbs["copies"] if "placeholder" in t["class"]]
    assert len(missing) == 1 and "missing.png" in missing[0]["title"]
    assert "could not be fetched" in page.text["copies"]
    assert all(t["src"].startswith("data:image/png;base64,") for t in page.thumbs["copies"])


def test_gallery_order_layer_and_captions(full: tuple[Path, Page]) -> None:
    _, page = full
    gens = [t["alt"].removeprefix("generated ") for t in page.thumbs["copies"] if t["alt"].startswith("generated")]
    assert len(gens) == len(GALLERY_SETS) * SHOWN
    assert gens[:SHOWN] == [f"copier/g{g}.png" for g in (3, 1, 2, 0)]  # layer 3's quantiles, ties by distance
    assert all(g.startswith("local/") for g in gens[SHOWN : 2 * SHOWN])
    assert "probe_flipped" not in page.text["copies"]
    assert "layer 3, C_T = -6.00" in page.text["copies"]
    assert "closer than 99.8% of test" in page.text["copies"]  # copier g3, rank 2 at layer 3: q = 0.002
    assert "#2 · d 0.02" in page.text["copies"]


def test_verdicts_cells_fingerprint_probes_errors_config(full: tuple[Path, Page]) -> None:
    _, page = full
    v = page.text["verdict"]
    for verdict in (schema.VERDICT_COPYING, schema.VERDICT_CLOSER, schema.VERDICT_NONE):
        assert verdict in v
    assert "L2:c1" in v and "add ≥ 200 more" in v and "1.0e-08" in v and "probe_flipped" not in v
    rows = page.table_rows("verdict")
    assert [r[0] for r in rows] == GALLERY_SETS
    assert rows[0][2:7] == [schema.VERDICT_COPYING, "-6.00 (L3)", "1.0e-08", "concentration:pixels", "2, 3, 4"]
    assert rows[1][2] == schema.VERDICT_CLOSER and rows[1][5:8] == ["cell:L2:c1", "–", "L2:c1"]
    assert "local" in page.text["cells"] and "few_gen" in page.text["cells"]
    fp = page.text["fingerprint"]
    assert "model_a" in fp and "⚠" in fp and "disagree on 1 of 1" in fp and "Confusion" in fp
    assert "On this gallery FID-nearest (layer 3) attributes best: 4/4 correct (1.00) against the paper's C_T " in fp
    assert "curve's 2/4 (0.50), +0.50 (95% interval over resampled runs [+0.00, +1.00]" in fp
    assert "called unknown 3/4" in fp and "wrongly called unknown 1/4" in fp and "threshold 0.450" in fp
    assert "Use layers 1-2 for pixel copies" in page.text["probes"]
    assert "decode_error" in page.text["errors"] and "bad <png>" in page.text["errors"]
    cfg = page.text["config"]
    assert "vit_tiny_patch16_224" in cfg and "9.9.9" in cfg and "randomly initialised" in cfg
    assert "ct.seed" in cfg and "fingerprint.seed" in cfg
    assert "fit 6.2, statistic 1.5, bootstrap 0.0" in cfg  # what each scoring stage cost (run.json's stats.score)


def test_minimal_old_run_says_what_is_missing(tmp_path: Path) -> None:
    old = [f for f in schema.CT_SCORES_SCHEMA if f.name not in (schema.P_VALUE, schema.CI_LOW, schema.CI_HIGH)]
    sch = pa.schema(old[:8])  # the columns of memray 0.1's ct_scores
    write_table(tmp_path / schema.CT_SCORES_FILE, [("a", ly, -0.5 * ly, 10, 10, 10, 2, 3) for ly in LAYERS], sch)
    (tmp_path / schema.RUN_FILE).write_text(json.dumps({"gen_sets": ["a"], "layers": LAYERS}))
    page = parse(build_report(str(tmp_path)))
    assert page.sections == list(SECTION_IDS)
    assert "verdicts.parquet is not in this run" in page.text["verdict"]
    assert "copies.parquet is not in this run" in page.text["copies"]
    assert NO_PROBES in page.text["probes"]
    assert "fingerprints.parquet is not in this run" in page.text["fingerprint"]
    assert "could not be drawn" not in "".join(page.text.values())
    assert sum(len(v) for v in page.thumbs.values()) == 0


def test_damaged_optional_file_is_a_note(tmp_path: Path) -> None:
    root = make_run(tmp_path / "run", probes=False)
    (root / schema.COPIES_FILE).write_bytes(b"not parquet")
    page = parse(build_report(str(root)))
    assert "copies.parquet could not be read" in page.text["copies"]
    assert NO_PROBES in page.text["probes"]


def test_not_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a memray run folder"):
        build_report(str(tmp_path))


def test_command_writes_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_run(tmp_path / "run", probes=False)
    out = tmp_path / "elsewhere" / "r.html"
    args = argparse.Namespace(run_dir=str(root), out=str(out), storage_option=[], max_sets=1, copies_per_set=2)
    assert run(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    page = parse(out)
    assert len(page.thumbs["copies"]) == 1 * 2 * (1 + K)  # max_sets = 1
    assert "2 more set(s) not shown" in page.text["copies"]


def test_parse_storage_options() -> None:
    got = parse_storage_options(
        ["anon=true", "client_kwargs.endpoint_url=http://h:9000", "config_kwargs.read_timeout=5"]
    )
    assert got == {
        "anon": True,
        "client_kwargs": {"endpoint_url": "http://h:9000"},
        "config_kwargs": {"read_timeout": 5},
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_storage_options(["novalue"])


def test_thumbnail_sizes() -> None:
    img = np.arange(28 * 28 * 3, dtype=np.uint32).reshape(28, 28, 3).astype(np.uint8)
    big = thumbnail(img, 84)
    assert big.shape == (84, 84, 3) and np.array_equal(big[::3, ::3], img) and np.array_equal(big[2::3, 2::3], img)
    assert thumbnail(img, 96).shape == (84, 84, 3)  # the largest integer factor that fits
    assert thumbnail(np.zeros((32, 32, 3), np.uint8), 96).shape == (96, 96, 3)
    assert thumbnail(np.zeros((100, 200, 3), np.uint8), 96).shape == (48, 96, 3)
    assert thumbnail(np.zeros((60, 60, 3), np.uint8), 96).shape == (60, 60, 3)
    grey = thumbnail(np.full((20, 30), 7, np.uint8), 84)  # greyscale in, RGB out, ×2 (30 × 3 > 84)
    assert grey.shape == (40, 60, 3) and (grey == 7).all()


def test_cell_list() -> None:
    assert cell_list("L3:c5,L4:c5") == "L3:c5, L4:c5"
    long = ",".join(f"L{ly}:c{c}" for ly in range(1, 7) for c in range(10))
    got = cell_list(long)
    assert ">60 cells: L1 ×10, L2 ×10, L3 ×10, L4 ×10, … (6 layers)</span>" in got and 'title="L1:c0, L1:c1' in got
    assert cell_list("") == "–" and cell_list(float("nan")) == "–"


def test_closer_than() -> None:
    assert closer_than(0.001) == "closer than 99.9% of test images"
    assert closer_than(0.0004) == "closer than 99.96% of test images"
    assert closer_than(0.25) == "closer than 75.0% of test images"
    assert closer_than(0.0) == "closer than all test images"
    assert closer_than(1.0, short=True) == "not closer than any test"
    assert closer_than(float("nan")) == "test quantile n/a"


def test_report_on_s3(tmp_path: Path, s3_bucket: str) -> None:
    import fsspec

    prefix = f"s3://{s3_bucket}/run"
    root = make_run(tmp_path / "run", source_prefix=prefix, probes=False)
    fs = fsspec.filesystem("s3")
    fs.put(str(root), f"{s3_bucket}/run", recursive=True)
    url = build_report(prefix, copies_per_set=SHOWN)
    assert url == f"{prefix}/{schema.REPORT_FILE}"
    local = tmp_path / "copy.html"
    local.write_bytes(fs.cat(url.removeprefix("s3://")))
    page = parse(local)
    assert page.sections == list(SECTION_IDS)
    thumbs = page.thumbs["copies"]
    assert len(thumbs) == len(GALLERY_SETS) * SHOWN * (1 + K)
    assert sum("placeholder" in t["class"] for t in thumbs) == 1


def test_a_failing_section_is_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from memray.report import build

    def broken(ctx: object) -> tuple[str, str, str]:
        raise RuntimeError("boom")

    monkeypatch.setattr(build, "SECTIONS", tuple((s, t, broken if s == "heatmap" else f) for s, t, f in build.SECTIONS))
    root = make_run(tmp_path / "run", probes=False)
    (root / schema.RUN_FILE).write_text("{not json")
    page = parse(build_report(str(root)))
    assert page.sections == list(SECTION_IDS)
    assert "could not be drawn: RuntimeError: boom" in page.text["heatmap"]
    assert "run.json could not be read" in page.text["config"]
    assert len(page.thumbs["copies"]) == len(GALLERY_SETS) * PER_SET * (1 + K)  # default 8 per set > the 5 there


def test_subcommand_parses_its_flags(tmp_path: Path) -> None:
    from memray.commands.report import add_parser

    parser = argparse.ArgumentParser(prog="memray")
    add_parser(parser.add_subparsers(dest="command"))
    root = make_run(tmp_path / "run", probes=False)
    args = parser.parse_args(["report", str(root), "--storage-option", "auto_mkdir=true", "--copies-per-set", "1"])
    assert args.storage_option == ["auto_mkdir=true"] and args.out is None
    assert args.func(args) == 0
    assert len(parse(root / schema.REPORT_FILE).thumbs["copies"]) == len(GALLERY_SETS) * 1 * (1 + K)


def test_plot_curves_script_svg_is_reproducible(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("plot_curves", Path(__file__).parents[1] / "scripts/plot_curves.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ct = pd.read_parquet(make_run(tmp_path / "run", probes=False) / schema.CT_SCORES_FILE)
    svg = module.render(ct, "C_T", "svg")
    assert svg.startswith(b"<svg") and svg == module.render(ct, "C_T", "svg")
    assert all(name.encode() in svg for name in CT)  # one legend entry per set (text kept as text)
    png = module.render(ct[[schema.GEN_SET, schema.LAYER, schema.CT]], "C_T", "png")  # an old table: no CI columns
    assert Image.open(io.BytesIO(png)).size == (1280, 700)
