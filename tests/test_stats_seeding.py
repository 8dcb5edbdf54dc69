"""memray.stats.seeding: the stable hash of sample ids (blake2b, written out here) and the exact sampling
threshold; the k-means++ restarts are tested with the Lloyd passes they start (test_stats_kmeans, test_stats_space)."""

from __future__ import annotations

import hashlib

from memray.stats.seeding import hash_threshold, stable_hash


def test_stable_hash_is_blake2b_of_seed_nul_id():
    assert stable_hash(0, "abc") == int.from_bytes(hashlib.blake2b(b"0\x00abc", digest_size=8).digest(), "little")
    assert stable_hash(3, "img/1.png") == int.from_bytes(
        hashlib.blake2b(b"3\x00img/1.png", digest_size=8).digest(), "little"
    )
    assert stable_hash(0, "abc") != stable_hash(1, "abc")


def test_hash_threshold_is_the_exact_fraction():
    t = hash_threshold(3, 10)
    assert t is not None and (t - 1) * 10 < 3 * 2**64 <= t * 10  # h < t  <=>  h·10 < 3·2^64
    assert hash_threshold(10, 10) is None and hash_threshold(None, 5) is None and hash_threshold(11, 10) is None
    assert hash_threshold(1, 2) == 2**63
