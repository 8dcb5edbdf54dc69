"""Leaked training images: the hypergeometric p by hand, Tarone's filter by hand, BH against a reference,
seeded null sets for the level (per image FDR, concentration), and power on a planted memorizer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from memray.stats.leaks import Hits, bh, concentration_test, leaked_images, tarone_keep


def test_p_value_is_the_hypergeometric_tail_by_hand():
    # m = 4 generated, n = 6 test; image 7: 2 generated hits and 1 test hit -> T = 3 of 10 samples
    hits = Hits(np.array([1, 1, 0, 0], bool), np.array([7, 7, 2, -1]), np.array([1, 0, 0, 0, 0, 0], bool),
                np.array([7, 3, 3, 3, 3, 3]))  # fmt: skip
    t = leaked_images(hits, alpha=0.5)
    assert t.rows.tolist() == [7] and t.n_hits.tolist() == [2] and t.test_hits.tolist() == [1]
    # P(X >= 2), X ~ Hypergeom(10, 4, 3): (C(4,2)C(6,1) + C(4,3)) / C(10,3) = (36 + 4) / 120
    assert t.p_value[0] == pytest.approx(40 / 120) and t.p_min[0] == pytest.approx(4 / 120)
    assert t.expected_hits[0] == pytest.approx(3 * 4 / 10)


def test_tarone_filter_and_bh_by_hand():
    p_min = np.array([0.001, 0.05, 0.2, 0.5])  # only tests that can reach p <= alpha stay
    assert tarone_keep(p_min, 0.05).tolist() == [True, True, False, False]
    p = np.array([0.01, 0.04, 0.03, 0.2])
    # sorted 0.01, 0.03, 0.04, 0.2 -> ·4/rank: 0.04, 0.06, 0.0533, 0.2 -> running min from the top
    np.testing.assert_allclose(bh(p), [0.04, 0.16 / 3, 0.16 / 3, 0.2])


def null_hits(rng: np.random.Generator, m: int, n: int, images: int) -> Hits:
    """Generated and test samples from one law: each hits with prob 0.05 a training image drawn from a skewed
    (hub-heavy) law — exchangeable, so nothing leaked."""
    w = rng.pareto(1.5, images) + 0.01
    w /= w.sum()
    hit = rng.random(m + n) < 0.05
    row = rng.choice(images, m + n, p=w)
    return Hits(hit[:m], row[:m], hit[m:], row[m:])


def test_null_sets_keep_the_false_discovery_and_concentration_levels():
    """300 seeded null sets with hub images: any discovery is false, so the share of sets with one is at most
    about FDR α (here α = 0.1); the concentration p-values reject about α of the time."""
    rng = np.random.default_rng(3)
    with_discovery, conc = 0, []
    for rep in range(300):
        h = null_hits(rng, 300, 600, 400)
        t = leaked_images(h, alpha=0.1)
        with_discovery += bool((t.q_value < 0.1).any())
        conc.append(concentration_test(h, permutations=199, seed=rep)[1])
    # under the global null FDR = P(any discovery) <= alpha; measured 0.057 here (concentration: 0.063 < 0.1)
    assert with_discovery / 300 <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / 300)
    rate = np.mean(np.array(conc) < 0.1)
    assert rate <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / 300), rate


def test_a_memorizer_of_few_images_is_found_and_its_images_listed():
    rng = np.random.default_rng(5)
    h = null_hits(rng, 500, 1000, 2000)
    leaked = rng.choice(2000, 30, replace=False)
    gen_hit, gen_row = h.gen_hit.copy(), h.gen_row.copy()
    gen_hit[:150], gen_row[:150] = True, np.repeat(leaked, 5)  # 30 images, 5 near-copies each
    hits = Hits(gen_hit, gen_row, h.test_hit, h.test_row)
    t = leaked_images(hits, alpha=0.05)
    found = set(t.rows[t.q_value < 0.05].tolist())
    assert len(found & set(leaked.tolist())) >= 27 and len(found - set(leaked.tolist())) <= 2
    s, p = concentration_test(hits, permutations=499, seed=0)
    assert s >= 30 * 10 and p == pytest.approx(1 / 500)


def test_concentration_p_resolves_below_what_holm_needs_and_stops_early_on_null_sets():
    """Defaults: a strong memorizer's p reaches 1/20,000 (999 fixed permutations could not go below 0.001, which
    Holm over ~100 tests never rejects); a null set stops at its 20th exceedance, p = 20/L, close to the p of a
    long fixed run (the same statistic, 20,000 permutations: within Monte-Carlo error)."""
    rng = np.random.default_rng(8)
    h = null_hits(rng, 500, 1000, 2000)
    leaked = rng.choice(2000, 30, replace=False)
    gen_hit, gen_row = h.gen_hit.copy(), h.gen_row.copy()
    gen_hit[:150], gen_row[:150] = True, np.repeat(leaked, 5)
    _, p = concentration_test(Hits(gen_hit, gen_row, h.test_hit, h.test_row), seed=1)
    assert p == pytest.approx(1 / 20_000) and p * 100 < 0.05
    _, p_seq = concentration_test(h, seed=2)
    _, p_fixed = concentration_test(h, permutations=20_000, seed=3, exceedances=10**9)
    assert p_seq == pytest.approx(p_fixed, abs=4 * math.sqrt(p_fixed * (1 - p_fixed) / 20) + 1e-3)
    assert p_seq > 0.05 and 20 / p_seq < 20_000  # it stopped early
