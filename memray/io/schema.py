"""Named column constants and explicit Arrow schemas for every table memray writes.

Score tables are tidy (one row per gen_set × layer × …) so ``pd.read_parquet(p).groupby("layer")`` just works.
Feature tables hold ``sample_id`` plus one fixed-size-list column per layer named ``layer_<ℓ>``.
"""

from __future__ import annotations

import re

import pyarrow as pa

# ---- column names -------------------------------------------------------------------------------------------
GEN_SET = "gen_set"
LAYER = "layer"
CT = "ct"
N_TRAIN = "n_train"
N_TEST = "n_test"
N_GEN = "n_gen"
CELLS_KEPT = "cells_kept"
CELLS_TOTAL = "cells_total"
CELL = "cell"
Z = "z"
KEPT = "kept"
STATUS = "status"
ROLE = "role"
SAMPLE_ID = "sample_id"
NN_TRAIN_ID = "nn_train_id"
NN_DISTANCE = "nn_distance"
SET = "set"
ERROR = "error"
LABEL = "label"
SUBSET = "subset"
QUERY = "query"
TRUE_LABEL = "true_label"
PREDICTED = "predicted"
SCORE = "score"
RUNNER_UP = "runner_up"
MARGIN = "margin"
METHOD = "method"  # the attribution method of a row: the curve (with its matcher), FID-nearest at a layer, …
P_VALUE = "p_value"  # one-sided p of "no copying" (small when C_T or a cell's Z is very negative)
P_HOLM = "p_holm"  # Holm-adjusted p (over a set's layers for C_T; over its kept cells × layers for cells)
CI_LOW = "ci_low"  # seeded bootstrap 95% interval of C_T (generated and test samples resampled within cells)
CI_HIGH = "ci_high"
PARTITION_MIN = "partition_min"  # C_T's range over ct.partitions seeded k-means partitions (NaN when 1)
PARTITION_MAX = "partition_max"
PARTITION_SEED = "partition_seed"
VERDICT = "verdict"
ALPHA = "alpha"
LAYERS = "layers"
TEST = "test"
N_TESTS = "n_tests"
REPLICATION_LAYERS = "replication_layers"
LOCALIZED = "localized"
FLAGGED_CELLS = "flagged_cells"
ADVICE = "advice"
RANK = "rank"
TRAIN_ID = "train_id"
DISTANCE = "distance"
VIEW = "view"  # the view (memray.embedding.views) whose embedding was nearest: "identity", "hflip", "dx+1", …
VIEWS_USED = "views_used"  # comma-separated views a sample's evidence score is the smallest over
N_BELOW = "n_below"
SHARE_BELOW = "share_below"
EXPECTED_SHARE = "expected_share"
RATE = "rate"
Q = "q"
R0 = "r0"
M = "m"
CELLS_USED = "cells_used"
M_DROPPED = "m_dropped"
REPLICATION_FILE = "replication.parquet"
MEMORIZED_FILE = "memorized.parquet"
N_HITS = "n_hits"  # generated samples whose evidence distance is below their cell's threshold on this image
TEST_HITS = "test_hits"
EXPECTED_HITS = "expected_hits"
Q_VALUE = "q_value"  # Benjamini–Hochberg over the set's testable images at the layer (NaN: cannot reach p <= alpha)
GEN_SAMPLES = "gen_samples"  # the closest generated samples on the image (up to 3), nearest first
GEN_DISTANCES = "gen_distances"
PAIRS = "same_image_pairs"  # pairs of generated hits on the same training image
CONCENTRATION_P = "concentration_p"
TEST_QUANTILE = "test_quantile"  # share of test samples whose nearest-training distance is below this distance
GEN_SOURCE = "gen_source"  # file path or URL a user can open; "<url>#<member or row>" inside an archive
TRAIN_SOURCE = "train_source"
PROBE = "probe"
N = "n"

ROLE_TEST = "test"
ROLE_GEN = "gen"

# Verdict of a generated set (verdicts.parquet).
VERDICT_COPYING = "copying"  # a per-image test (replication, concentration) rejected (Holm, the set's whole family)
VERDICT_CLOSER = "closer_to_training"  # only set-level tests (C_T, cells) rejected (same family)
VERDICT_NONE = "no_evidence"  # no test rejected
VERDICT_UNDEFINED = "undefined"  # no layer has a defined C_T (too few generated samples; see advice)

# Status of a cell in ct_cells.
CELL_OK = "ok"  # kept: enough generated samples, test and train present
CELL_FEW_GEN = "few_gen"  # n_gen <= min_gen_per_cell (the τ rule)
CELL_NO_TEST = "no_test"  # no test sample in the cell: Z undefined, excluded (the reference raises)
CELL_NO_TRAIN = "no_train"  # no training sample in the cell: no neighbour exists, excluded

# ---- file names ---------------------------------------------------------------------------------------------
CT_SCORES_FILE = "ct_scores.parquet"
CT_CELLS_FILE = "ct_cells.parquet"
NEIGHBORS_FILE = "neighbors.parquet"
ERRORS_FILE = "errors.parquet"
FINGERPRINTS_FILE = "fingerprints.parquet"
ATTRIBUTION_FILE = "attribution.parquet"
RUN_FILE = "run.json"
VERDICTS_FILE = "verdicts.parquet"
COPIES_FILE = "copies.parquet"
STABILITY_FILE = "ct_stability.parquet"
PROBES_FILE = "probes.parquet"
PROBES_SUMMARY_FILE = "probes.json"
REPORT_FILE = "report.html"
GALLERY_FILE = "gallery.parquet"
ATTRIBUTION_FID_FILE = "attribution_fid.parquet"  # the FID-nearest baseline beside the curves' attribution
EVALUATION_DIR = "evaluation"
EVALUATION_FILE = "evaluation.parquet"
ACCURACY_FILE = "accuracy.csv"
CONFUSION_FILE = "confusion.csv"
COMPARISON_FILE = "comparison.csv"  # evaluation: each method against the curve method (paired)
OPEN_SET_FILE = "open_set.csv"  # evaluation: the open-set threshold calibrated by leaving one family out

# Metadata key in Parquet schemas holding the JSON config that produced the table.
META_KEY = b"memray"

# ---- schemas ------------------------------------------------------------------------------------------------
CT_SCORES_SCHEMA = pa.schema(
    [
        (GEN_SET, pa.string()),
        (LAYER, pa.int32()),
        (CT, pa.float64()),
        (N_TRAIN, pa.int64()),
        (N_TEST, pa.int64()),
        (N_GEN, pa.int64()),
        (CELLS_KEPT, pa.int32()),
        (CELLS_TOTAL, pa.int32()),
        (P_VALUE, pa.float64()),
        (P_HOLM, pa.float64()),
        (CI_LOW, pa.float64()),
        (CI_HIGH, pa.float64()),
        (PARTITION_MIN, pa.float64()),
        (PARTITION_MAX, pa.float64()),
    ]
)

CT_CELLS_SCHEMA = pa.schema(
    [
        (GEN_SET, pa.string()),
        (LAYER, pa.int32()),
        (CELL, pa.int32()),
        (Z, pa.float64()),
        (N_TRAIN, pa.int64()),
        (N_TEST, pa.int64()),
        (N_GEN, pa.int64()),
        (KEPT, pa.bool_()),
        (STATUS, pa.string()),
        (P_VALUE, pa.float64()),
        (P_HOLM, pa.float64()),
    ]
)

NEIGHBORS_SCHEMA = pa.schema(
    [
        (ROLE, pa.string()),
        (GEN_SET, pa.string()),
        (SAMPLE_ID, pa.string()),
        (LAYER, pa.int32()),
        (CELL, pa.int32()),
        (NN_TRAIN_ID, pa.string()),
        (NN_DISTANCE, pa.float64()),
    ]
)

ERRORS_SCHEMA = pa.schema([(SET, pa.string()), (SAMPLE_ID, pa.string()), (STATUS, pa.string()), (ERROR, pa.string())])

FINGERPRINTS_SCHEMA = pa.schema(
    [(GEN_SET, pa.string()), (LABEL, pa.string()), (SUBSET, pa.int32()), (LAYER, pa.int32()), (CT, pa.float64())]
)

ATTRIBUTION_SCHEMA = pa.schema(
    [
        (METHOD, pa.string()),
        (QUERY, pa.string()),
        (TRUE_LABEL, pa.string()),
        (PREDICTED, pa.string()),
        (SCORE, pa.float64()),
        (RUNNER_UP, pa.string()),
        (MARGIN, pa.float64()),
    ]
)

VERDICTS_SCHEMA = pa.schema(
    [
        (GEN_SET, pa.string()),
        (VERDICT, pa.string()),
        (ALPHA, pa.float64()),
        (P_HOLM, pa.float64()),  # smallest Holm-adjusted p of the set's family (C_T, cells, replication)
        (TEST, pa.string()),  # the test with that p: "ct:L3", "cell:L3:c5", "replication:L3", "concentration:L3"
        (N_TESTS, pa.int64()),  # the family's size (defined tests)
        (LAYERS, pa.list_(pa.int32())),  # layers whose C_T test is rejected in the family, e.g. [1, 2, 3]
        (REPLICATION_LAYERS, pa.list_(pa.int32())),  # layers (-1: pixels) whose replication/concentration is
        (LOCALIZED, pa.bool_()),  # some cell rejected in the family
        (FLAGGED_CELLS, pa.list_(pa.string())),  # e.g. ["L3:c5", "L4:c5"]
        (N_GEN, pa.int64()),
        (ADVICE, pa.string()),  # sample-size guidance, "" when the set is large enough
    ]
)

COPIES_SCHEMA = pa.schema(
    [
        (GEN_SET, pa.string()),
        (SAMPLE_ID, pa.string()),
        (LAYER, pa.int32()),
        (RANK, pa.int32()),  # 1 = nearest over the WHOLE training set (not only the sample's cell)
        (TRAIN_ID, pa.string()),
        (DISTANCE, pa.float64()),
        (TEST_QUANTILE, pa.float64()),
        (GEN_SOURCE, pa.string()),
        (TRAIN_SOURCE, pa.string()),
        (VIEW, pa.string()),
    ]
)

REPLICATION_SCHEMA = pa.schema(
    [
        (GEN_SET, pa.string()),
        (LAYER, pa.int32()),
        (VIEWS_USED, pa.string()),
        (M, pa.int64()),
        (N_TEST, pa.int64()),
        (N_BELOW, pa.int64()),
        (SHARE_BELOW, pa.float64()),
        (EXPECTED_SHARE, pa.float64()),
        (RATE, pa.float64()),
        (CI_LOW, pa.float64()),
        (CI_HIGH, pa.float64()),
        (P_VALUE, pa.float64()),
        (Q, pa.float64()),
        (R0, pa.float64()),
        (CELLS_USED, pa.int32()),
        (M_DROPPED, pa.int64()),
        (PAIRS, pa.int64()),
        (CONCENTRATION_P, pa.float64()),
    ]
)
"""``replication.parquet``: per generated set and layer, the replication-rate test (:mod:`memray.stats.replication`)
on the evidence distance (nearest training sample over the whole training set, smallest over ``views_used``)."""

MEMORIZED_SCHEMA = pa.schema(
    [
        (GEN_SET, pa.string()),
        (LAYER, pa.int32()),
        (TRAIN_ID, pa.string()),
        (TRAIN_SOURCE, pa.string()),
        (N_HITS, pa.int64()),
        (TEST_HITS, pa.int64()),
        (EXPECTED_HITS, pa.float64()),
        (P_VALUE, pa.float64()),
        (Q_VALUE, pa.float64()),
        (GEN_SAMPLES, pa.list_(pa.string())),
        (GEN_DISTANCES, pa.list_(pa.float64())),
    ]
)
"""``memorized.parquet``: per generated set, layer and training image some generated sample hit, the exact test of
"generated samples fall on it no more often than test samples" (:mod:`memray.stats.leaks`)."""

STABILITY_SCHEMA = pa.schema(
    [(GEN_SET, pa.string()), (LAYER, pa.int32()), (PARTITION_SEED, pa.int64()), (CT, pa.float64())]
)

PROBES_SCHEMA = pa.schema(
    [
        (PROBE, pa.string()),
        (LAYER, pa.int32()),
        (CT, pa.float64()),
        (P_VALUE, pa.float64()),
        (CI_LOW, pa.float64()),
        (CI_HIGH, pa.float64()),
        (N, pa.int64()),
    ]
)

# ---- feature tables -----------------------------------------------------------------------------------------
_LAYER_COL = re.compile(r"^layer_(\d+)$")
VIEW_SEP = "@"
"""Between a layer column and its view: ``layer_3@hflip`` (set names may not contain it)."""
_VIEW_COL = re.compile(r"^layer_(\d+)@([A-Za-z0-9.+-]+)$")


PIXEL_LAYER = -1
"""The layer number of pixel space (:mod:`memray.embedding.pixels`): an evidence space beside the encoder's layers,
column ``pixels``; no C_T is reported for it."""
PIXEL_COLUMN = "pixels"


def layer_column(layer: int) -> str:
    """Column name of layer ℓ in a feature table (``pixels`` for :data:`PIXEL_LAYER`)."""
    return PIXEL_COLUMN if int(layer) == PIXEL_LAYER else f"layer_{int(layer)}"


def view_column(layer: int, view: str = "") -> str:
    """Column of layer ℓ under a view (:mod:`memray.embedding.views`): ``layer_<ℓ>@<view>``; ``layer_<ℓ>`` for
    identity (``view`` empty)."""
    return layer_column(layer) + (f"{VIEW_SEP}{view}" if view else "")


def parse_view_column(name: str) -> tuple[int, str] | None:
    """``(ℓ, view)`` of a ``layer_<ℓ>@<view>`` column, or ``None`` for other columns (identity ones included)."""
    m = _VIEW_COL.match(name)
    if m:
        return int(m.group(1)), m.group(2)
    base, sep, view = name.partition(VIEW_SEP)
    return (PIXEL_LAYER, view) if base == PIXEL_COLUMN and sep and view else None


def parse_layer_column(name: str) -> int | None:
    """The layer number of a ``layer_<ℓ>`` column, or ``None`` for other columns."""
    if name == PIXEL_COLUMN:
        return PIXEL_LAYER
    m = _LAYER_COL.match(name)
    return int(m.group(1)) if m else None


def feature_schema(dims: dict[int, int], dtype: pa.DataType | None = None) -> pa.Schema:
    """Schema of a feature table: ``sample_id`` then one fixed-size list per layer, in layer order."""
    cols = [(SAMPLE_ID, pa.string())]
    dtype = dtype or pa.float32()
    cols += [(layer_column(layer), pa.list_(dtype, dims[layer])) for layer in sorted(dims)]
    return pa.schema(cols)
