"""Evidence over views: the smallest distance over views against brute force, the view named in copies, the
replication table against the core test, and test_quantile calibrated for held-out samples under views."""

from __future__ import annotations

import numpy as np
import pytest

from memray.io.features import FeatureSet
from memray.io.rows import ArrayRows
from memray.stats.config import CTConfig, EvidenceConfig
from memray.stats.evidence import check_views
from memray.stats.layers import score_features
from memray.stats.replication import replication_test


def fs(x: np.ndarray, prefix: str) -> FeatureSet:
    return FeatureSet(np.array([f"{prefix}{i:05d}" for i in range(len(x))], dtype=object), {1: x})


def nearest_l2(q: np.ndarray, t: np.ndarray) -> np.ndarray:
    d = ((q[:, None, :].astype(np.float64) - t[None, :, :]) ** 2).sum(-1)
    return np.sqrt(d.min(axis=1))


@pytest.fixture(scope="module")
def scored():
    rng = np.random.default_rng(7)
    d = 8
    train = rng.normal(size=(600, d)).astype(np.float32)
    test = rng.normal(size=(400, d)).astype(np.float32)
    fresh = rng.normal(size=(300, d)).astype(np.float32)
    copies = rng.normal(size=(200, d)).astype(np.float32)  # identity: fresh; the "hflip" view: a training row
    copies_h = rng.normal(size=(200, d)).astype(np.float32)
    leaked = rng.choice(600, 12, replace=False)
    copies_h[:60] = train[np.repeat(leaked, 5)]  # 12 training rows, each copied 5 times (seen under the view)
    views = {
        None: {"hflip": fs(rng.normal(size=(400, d)).astype(np.float32), "t")},
        "fresh": {"hflip": fs(rng.normal(size=(300, d)).astype(np.float32), "f")},
        "copy": {"hflip": fs(copies_h, "c")},
    }
    cfg = CTConfig(mode="meehan", cells=3, top_k=2, bootstrap=0, min_gen_per_cell=5)
    ev = EvidenceConfig(q=0.05, r0=0.02, statistic="distance")
    sets = {"fresh": fs(fresh, "f"), "copy": fs(copies, "c")}
    res = score_features(fs(train, "tr"), fs(test, "t"), sets, cfg, views=views, evidence=ev)
    return res, train, test, sets, views, ev, leaked


def test_copies_hold_the_smallest_distance_over_views_and_name_the_view(scored):
    res, train, _, sets, views, _, _ = scored
    top = res.copies[res.copies["rank"] == 1].set_index("sample_id")
    for name in ("fresh", "copy"):
        x, xh = sets[name].layers[1], views[name]["hflip"].layers[1]
        want = np.minimum(nearest_l2(x, train), nearest_l2(xh, train))
        got = top.loc[sets[name].ids, "distance"].to_numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
        view = np.where(nearest_l2(xh, train) < nearest_l2(x, train), "hflip", "identity")
        assert (top.loc[sets[name].ids, "view"].to_numpy() == view).all()
    assert (top.loc[sets["copy"].ids[:60], "view"] == "hflip").all()


def test_replication_table_equals_the_core_test_on_brute_force_distances(scored):
    res, train, test, sets, views, ev, _ = scored
    rep = res.replication.set_index("gen_set")
    nb = res.neighbors
    tcells = nb[nb.role == "test"].set_index("sample_id").loc[fs(test, "t").ids, "cell"].to_numpy()
    td = np.minimum(nearest_l2(test, train), nearest_l2(views[None]["hflip"].layers[1], train))
    for name in ("fresh", "copy"):
        gcells = nb[nb.gen_set == name].set_index("sample_id").loc[sets[name].ids, "cell"].to_numpy()
        gd = np.minimum(nearest_l2(sets[name].layers[1], train), nearest_l2(views[name]["hflip"].layers[1], train))
        want = replication_test(td, tcells, gd, gcells, 3, ev.q, ev.r0)
        assert rep.loc[name, "n_below"] == want.k_obs and rep.loc[name, "views_used"] == "identity,hflip"
        assert rep.loc[name, "p_value"] == pytest.approx(want.p_value, rel=1e-9, abs=1e-300)
    assert rep.loc["copy", "rate"] > 0.2 and rep.loc["copy", "p_value"] < 1e-10
    assert res.verdicts.set_index("gen_set").loc["copy", "verdict"] == "copying"


def test_views_must_match_their_set_row_for_row():
    rows = ArrayRows(np.zeros((5, 2), np.float32))
    with pytest.raises(ValueError, match="has 5 rows but 4 under view 'hflip'"):
        check_views({"g": {"hflip": ArrayRows(np.zeros((4, 2), np.float32))}}, {None: rows, "g": rows}, 1)


@pytest.mark.parametrize(("statistic", "top_k"), [("distance", 1), ("relative", 4)])
def test_held_out_samples_under_views_keep_test_quantile_calibrated(statistic: str, top_k: int):
    """Fresh samples with fresh views: the share of test_quantile below 0.05 stays near 0.05 (seeded, 2,000)."""
    rng = np.random.default_rng(11)
    d, n, m = 6, 2000, 2000
    train = rng.normal(size=(1500, d)).astype(np.float32)

    def draw(k: int, prefix: str) -> tuple[FeatureSet, dict[str, FeatureSet]]:
        under = {v: fs(rng.normal(size=(k, d)).astype(np.float32), prefix) for v in ("hflip", "dx+1")}
        return fs(rng.normal(size=(k, d)).astype(np.float32), prefix), under

    test, tv = draw(n, "t")
    gen, gv = draw(m, "g")
    cfg = CTConfig(mode="meehan", cells=3, top_k=top_k, bootstrap=0)
    ev = EvidenceConfig(statistic=statistic)
    res = score_features(fs(train, "tr"), test, {"held": gen}, cfg, views={None: tv, "held": gv}, evidence=ev)
    tq = res.copies.loc[res.copies["rank"] == 1, "test_quantile"].to_numpy()
    # Var of the share: q(1-q)/m from the samples plus about the same from the test set's own quantile
    assert abs(np.mean(tq < 0.05) - 0.05) < 4 * np.sqrt(2 * 0.05 * 0.95 / m)
    assert abs(np.median(tq) - 0.5) < 0.05


def test_memorized_lists_the_leaked_images_with_their_copies(scored):
    res, _, _, sets, _, _, leaked = scored
    mem = res.memorized
    found = mem[(mem.gen_set == "copy") & (mem.q_value < 0.05)]
    assert set(found.train_id) == {f"tr{i:05d}" for i in leaked}  # every leaked image, nothing else
    assert (found.n_hits == 5).all() and (found.test_hits == 0).all()
    copies = set(sets["copy"].ids[:60])
    assert all(set(g) <= copies and len(g) == 3 for g in found.gen_samples)
    assert not (mem[mem.gen_set == "fresh"].q_value < 0.05).any()
    rep = res.replication.set_index("gen_set")
    assert rep.loc["copy", "concentration_p"] < 0.01 and rep.loc["copy", "same_image_pairs"] >= 12 * 10
    assert rep.loc["fresh", "concentration_p"] > 0.05


def relative_l2(q: np.ndarray, t: np.ndarray, k: int) -> np.ndarray:
    """Brute-force d_1 / d_k (Euclidean) of each query over all training rows."""
    d = np.sqrt(((q[:, None, :].astype(np.float64) - t[None, :, :]) ** 2).sum(-1))
    d.sort(axis=1)
    return d[:, 0] / d[:, k - 1]


def test_relative_score_is_the_smallest_ratio_over_views_and_sets_test_quantile(scored):
    """evidence.statistic=relative: each sample's score is min over views of d_1/d_k (brute force); copies'
    test_quantile is that score's rank among the test samples' scores; the copied rows are hits."""
    _, train, test, sets, views, _, _ = scored
    cfg = CTConfig(mode="meehan", cells=3, top_k=3, bootstrap=0, min_gen_per_cell=5)
    ev = EvidenceConfig(q=0.05, r0=0.02, statistic="relative")
    res = score_features(fs(train, "tr"), fs(test, "t"), sets, cfg, views=views, evidence=ev)
    t_score = np.minimum(relative_l2(test, train, 3), relative_l2(views[None]["hflip"].layers[1], train, 3))
    top = res.copies[res.copies["rank"] == 1].set_index("sample_id")
    for name in ("fresh", "copy"):
        want = np.minimum(relative_l2(sets[name].layers[1], train, 3),
                          relative_l2(views[name]["hflip"].layers[1], train, 3))  # fmt: skip
        got_q = top.loc[sets[name].ids, "test_quantile"].to_numpy()
        want_q = (t_score[None, :] < want[:, None]).mean(axis=1)
        np.testing.assert_allclose(got_q, want_q, atol=1e-12)
    assert (top.loc[sets["copy"].ids[:60], "test_quantile"] == 0).all()  # exact copies: score 0
    rep = res.replication.set_index("gen_set")
    assert rep.loc["copy", "n_below"] >= 60 and rep.loc["copy", "p_value"] < 1e-10


def test_relative_score_does_not_flag_hub_samples():
    """Samples at the centre of a tight training cluster (a "hub": short distance to MANY training rows) are
    flagged by the distance score but not by the relative one; exact copies are flagged by both."""
    rng = np.random.default_rng(5)
    d = 6
    centres = rng.normal(scale=4.0, size=(20, d))
    train = (centres[rng.integers(0, 20, 2000)] + rng.normal(size=(2000, d))).astype(np.float32)
    test = (centres[rng.integers(0, 20, 1000)] + rng.normal(size=(1000, d))).astype(np.float32)
    hubs = (centres[rng.integers(0, 20, 300)] + rng.normal(scale=0.05, size=(300, d))).astype(np.float32)
    cfg = CTConfig(mode="meehan", cells=3, top_k=5, bootstrap=0, min_gen_per_cell=5)
    got = {}
    for statistic in ("distance", "relative"):
        ev = EvidenceConfig(q=0.01, r0=0.005, statistic=statistic)
        res = score_features(fs(train, "tr"), fs(test, "t"), {"hub": fs(hubs, "h")}, cfg, evidence=ev)
        got[statistic] = res.replication.set_index("gen_set").loc["hub", "p_value"]
    assert got["distance"] < 1e-3 and got["relative"] > 0.05, got
