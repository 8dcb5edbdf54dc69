"""README.md's checkable facts against the files they name: benchmarks, configs, the test suite's size, the
cluster's job address. Each check reads the README's own words, so a README that drifts fails here."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}
TESTS_TOLERANCE = 0.05  # "~N tests" in the README: within 5% of the collected suite
# Run in a child: collects the suite and prints [tests, tests marked gpu] as JSON on the last line.
COLLECT = """
import json, sys, pytest
class Count:
    def pytest_collection_finish(self, session):
        self.n = [len(session.items), sum(1 for i in session.items if i.get_closest_marker("gpu"))]
c = Count()
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests"], plugins=[c])
print(json.dumps(c.n if code == 0 else None))
"""


def make_bench() -> list[str]:
    """The benchmark scripts that ``make bench`` runs, in order."""
    recipe = re.search(r"^bench:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe, "Makefile has no bench recipe"
    return re.findall(r"benchmarks/(\w+\.py)", recipe.group(1))


def test_every_file_and_make_target_the_readme_names_exists() -> None:
    top = "benchmarks|data|deploy|docs|examples|jobs|memray|models|scripts|tests"  # the repository's folders
    paths = set(re.findall(rf"(?<![\w/.-])((?:{top})/[\w./-]*\w)", README))  # not inside another path or URL
    assert len(paths) > 20 and not [p for p in paths if not (ROOT / p).exists()], sorted(paths)
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"`make (\w+)", README))
    assert {"demo", "test", "bench"} <= named <= targets, (named, targets)
    benches = set(re.findall(r"\b(bench_\w+\.py)\b", README))
    assert benches and benches <= {p.name for p in (ROOT / "benchmarks").glob("*.py")}, benches
    named = set(re.findall(r"`((?:[\w.-]+/)*[\w.-]+\.ya?ml)", README))
    paths = {n for n in named if "/" in n or (ROOT / n).exists()}  # a bare name may be an output (audit.yaml)
    assert {"jobs/configs/default.yaml", "cluster.yaml", "deploy/kuberay/rayjob.yaml"} <= paths, paths
    assert not [n for n in paths if not (ROOT / n).exists()]


def test_make_bench_is_what_the_readme_says() -> None:
    runs = make_bench()
    said = re.search(r"`make bench` \((\w+) benchmarks in `benchmarks/`: (.*?)\)", README, re.S)
    assert said, "the Development section no longer says what `make bench` runs"
    listed = re.findall(r"`(bench_\w+\.py)`", said.group(2))
    assert NUMBERS[said.group(1)] == len(runs) and listed == runs, (said.group(0), runs)
    performance = README.split("## Performance (2 CPU cores, `make bench`)", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `(bench_\w+\.py)`", performance, re.M))
    assert rows and rows <= set(runs), rows  # the table under "make bench" shows only what it runs


def test_make_test_times_agree() -> None:
    minutes = re.findall(r"`make test`[^`]*?about (\d+) minutes", README)
    assert len(minutes) >= 2 and len(set(minutes)) == 1, minutes  # Quick start and Development say the same


def test_cluster_submit_uses_the_address_cluster_yaml_forwards() -> None:
    forwarded = re.search(r"RAY_ADDRESS=(\S+) ray job submit", (ROOT / "cluster.yaml").read_text())
    submits = re.findall(r"ray job submit --address (\S+)", README)
    assert forwarded and submits and set(submits) == {forwarded.group(1)}, (forwarded, submits)


@pytest.mark.timeout(300)
def test_the_test_count_and_gpu_tests_are_the_suite_s() -> None:
    proc = subprocess.run([sys.executable, "-c", COLLECT], cwd=ROOT, capture_output=True, text=True, timeout=240)
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts, proc.stdout[-2000:] + proc.stderr[-2000:]
    total, gpu = counts
    stated = [int(n.replace(",", "")) for n in re.findall(r"~([\d,]+) tests", README)]
    assert stated and all(abs(n - total) <= TESTS_TOLERANCE * total for n in stated), (stated, total)
    skipped = re.search(r"`N passed, (\d+) skipped` — the (\w+) GPU tests", README)
    assert skipped and int(skipped.group(1)) == NUMBERS[skipped.group(2)] == gpu, (skipped, gpu)


def _field_type(cls: type, name: str) -> type | None:
    """The dataclass type of field ``name`` of ``cls`` (``X | None`` unwrapped), or None for a leaf; KeyError if
    ``cls`` has no such field."""
    hints = typing.get_type_hints(cls)
    if name not in {f.name for f in dataclasses.fields(cls)}:
        raise KeyError(f"{cls.__name__}.{name}")
    kinds = [t for t in (typing.get_args(hints[name]) or (hints[name],)) if dataclasses.is_dataclass(t)]
    return kinds[0] if kinds else None


def test_every_field_of_the_configuration_reference_is_a_config_field() -> None:
    from memray.job.config import AuditConfig

    table = README.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    names = []
    for cell in re.findall(r"^\| (`[^|]*`) \|", table, re.M):
        first, *more = re.findall(r"`([\w.]+)`", cell)
        section = first.rsplit(".", 1)[0] + "." if "." in first else ""
        names += [first, *(m if "." in m else section + m for m in more)]
    assert len(names) > 40, names
    unknown = []
    for dotted in names:
        cls: type | None = AuditConfig
        for part in dotted.split("."):
            if cls is None:  # inside a mapping (storage_options.op_timeout_s): not a dataclass field
                break
            try:
                cls = _field_type(cls, part)
            except KeyError:
                unknown.append(dotted)
                break
    assert not unknown, unknown
