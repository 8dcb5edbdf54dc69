"""Settings of the memorization probes: which transformed-training-image sets to build, from how many images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from memray.config import at_least, rule, validate

PROBE_DEFAULTS: dict[str, dict[str, Any]] = {
    "rotated": {"max_angle": 30.0},  # degrees, uniform in ±max_angle
    "shuffled": {"grid": 4},  # grid × grid blocks
    "downsampled": {"factor": 4.0},  # each side / factor, and back
    "noisy": {"sigma": 25.0},  # grey levels
    "cropped": {"scale": 0.5},  # crop side / image side
    "flipped": {},
    "copies": {},
    "near_copies": {"sigma": 4.0},  # grey levels
}
"""Probe name → the parameters it is built with, in build and report order (the transforms:
:data:`memray.probes.transforms.PROBES`). Kept here, free of image code, so job configs can import this module."""
PROBE_NAMES: tuple[str, ...] = tuple(PROBE_DEFAULTS)
PROBE_SET_PREFIX = "probe_"
"""Generated sets named ``probe_<probe>`` are the probe sets memray builds (the name is reserved for them)."""


def _probes_ok(v: tuple[str, ...]) -> bool:
    return len(v) > 0 and set(v) <= set(PROBE_NAMES) and len(set(v)) == len(v)


@dataclass(frozen=True)
class ProbesConfig:
    """Settings of the probe sets (He et al. 2024: transformed training images scored as generated sets).

    ``probes``: names from :data:`PROBE_NAMES` (default: all eight), each built with its parameters in
    :data:`PROBE_DEFAULTS` (:meth:`params`). ``n``: training images sampled (one seeded sample shared by every probe;
    all of them when the training set is smaller). ``seed``: seeds the sample and every transform (image ``i`` of
    probe ``p`` uses ``default_rng([seed, crc32(p), i])``).
    """

    SECTION = "probes"

    probes: tuple[str, ...] = field(
        default=PROBE_NAMES,
        metadata=rule(f"(non-empty, from {', '.join(PROBE_NAMES)}, no repeats)", _probes_ok),
    )
    n: int = field(default=500, metadata=at_least(1))
    seed: int = field(default=0, metadata=at_least(0))

    def __post_init__(self) -> None:
        validate(self)

    @staticmethod
    def params(probe: str) -> dict[str, Any]:
        """The parameters probe ``probe`` is built with (a copy of its :data:`PROBE_DEFAULTS` entry)."""
        return dict(PROBE_DEFAULTS[probe])
