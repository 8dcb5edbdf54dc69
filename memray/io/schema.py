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
LOCALIZED = "localized"
FLAGGED_CELLS = "flagged_cells"
ADVICE = "advice"
RANK = "rank"
TRAIN_ID = "train_id"
DISTANCE = "distance"
TEST_QUANTILE = "test_quantile"  # share of test samples whose nearest-training distance is below this distance
GEN_SOURCE = "gen_source"  # file path or URL a user can open; "<url>#<member or row>" inside an archive
TRAIN_SOURCE = "train_source"
PROBE = "probe"
N = "n"

ROLE_TEST = "test"
ROLE_GEN = "gen"

# Verdict of a generated set (verdicts.parquet).
VERDICT_COPYING = "copying"  # C_T significantly negative at some layer (Holm over layers, level alpha)
VERDICT_LOCALIZED = "localized_copying"  # C_T not significant, but some cell is (Holm over cells × layers)
VERDICT_NONE = "no_evidence"  # neither
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
        (P_HOLM, pa.float64()),  # smallest Holm-adjusted C_T p over the layers
        (LAYERS, pa.string()),  # layers whose Holm-adjusted C_T p < alpha, e.g. "1,2,3"
        (LOCALIZED, pa.bool_()),  # some cell significant after Holm over cells × layers
        (FLAGGED_CELLS, pa.string()),  # e.g. "L3:c5,L4:c5"
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
    ]
)

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


def layer_column(layer: int) -> str:
    """Column name of layer ℓ in a feature table."""
    return f"layer_{int(layer)}"


def parse_layer_column(name: str) -> int | None:
    """The layer number of a ``layer_<ℓ>`` column, or ``None`` for other columns."""
    m = _LAYER_COL.match(name)
    return int(m.group(1)) if m else None


def feature_schema(dims: dict[int, int], dtype: pa.DataType | None = None) -> pa.Schema:
    """Schema of a feature table: ``sample_id`` then one fixed-size list per layer, in layer order."""
    cols = [(SAMPLE_ID, pa.string())]
    dtype = dtype or pa.float32()
    cols += [(layer_column(layer), pa.list_(dtype, dims[layer])) for layer in sorted(dims)]
    return pa.schema(cols)
