"""README.md's snippets and cheap commands, run as written, so the README cannot drift from the code.

- Every fenced ```python block runs against the output of a real audit of the demo config made here (its trained
  encoder and probes): the demo's folder ``runs/demo`` in the block is replaced by that output; a block that runs
  ``memray.audit`` itself runs it on timm's tiny ``test_vit``. Lines that touch
  ``s3://`` are dropped before the block runs (they show reading results from object storage, which needs a
  bucket); every other line must run without error.
- The cheap shell commands are extracted from the README's ```bash blocks (lines starting with ``memray `` or
  ``python scripts/plot_curves.py``, continuations joined, ``#`` comments dropped) and run with their ``runs/…``
  outputs redirected to tmp folders. Commands with an ``s3://`` argument (placeholder inputs and weights) are not
  run. A test also checks the README still contains each expected command, so renaming a flag fails here.
- The README's output table names every entry of a real output folder, with the columns the files really have.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DEMO = "runs/demo"
AUDIT_SETS = ("resources.actor_num_cpus=0.5", "resources.torch_threads=1")  # the demo as shipped (trained encoder)
# what the README's own audit examples run on in the tests (a tiny ViT, 32 px, fewer CPUs per actor)
SMALL_MODEL = {
    '"vit_tiny_patch16_224"': '"test_vit"',
    '"embed.model_kwargs": {"img_size": 112}': '"embed.model_kwargs": {"img_size": 32}, '
    '"resources.actor_num_cpus": 0.5',
}


def fenced(text: str, lang: str) -> list[str]:
    """The bodies of the ```lang blocks of ``text``, in order."""
    return [m.group(1) for m in re.finditer(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)]


def shell_commands(text: str) -> list[list[str]]:
    """Every command line of the bash blocks as argv (``\\`` continuations joined, comments dropped)."""
    out = []
    for block in fenced(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                out.append(argv)
    return out


def readme_runs(prefix: tuple[str, ...]) -> list[list[str]]:
    """The README's runnable commands starting with ``prefix`` (none with an ``s3://`` argument)."""
    cmds = [a for a in shell_commands(README) if tuple(a[: len(prefix)]) == prefix]
    return [a for a in cmds if not any("s3://" in t for t in a)]


def comment_of(argv: list[str]) -> str:
    """The ``#`` comment ending the README line of the command ``argv`` ("" when it has none)."""
    for block in fenced(README, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if shlex.split(line, comments=True) == argv:
                return line.split("#", 1)[1] if "#" in line else ""
    raise AssertionError(f"command not in the README: {argv}")


def redirect(argv: list[str], tmp: Path, demo: Path | None = None) -> list[str]:
    """``argv`` with ``runs/demo…`` pointed at ``demo`` and every other ``runs/…`` path under ``tmp``."""
    out = []
    for t in argv:
        if demo is not None and (t == DEMO or t.startswith(DEMO + "/")):
            t = str(demo) + t[len(DEMO) :]
        elif t.startswith("runs/"):
            t = str(tmp / t)
        out.append(t)
    return out


def env() -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    e.pop("RAY_ADDRESS", None)  # the job must start its own local Ray, not join someone else's
    return e


def run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a README command: ``memray …`` as ``python -m memray.cli …``, ``python …`` with this interpreter."""
    head = [sys.executable, "-m", "memray.cli"] if argv[0] == "memray" else [sys.executable]
    proc = subprocess.run(
        [*head, *argv[1:]], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{argv}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real audit of the demo config, trained encoder and probes included (the README's ``runs/demo``)."""
    out = tmp_path_factory.mktemp("readme") / "demo"
    argv = ["python", "jobs/audit.py", "--config", "jobs/configs/default.yaml", "--output", str(out)]
    argv += ["--num-cpus", "2", *[x for s in AUDIT_SETS for x in ("--set", s)]]
    run(argv, timeout=540)
    return out


# ---- the python blocks ----

PY_BLOCKS = fenced(README, "python")


def test_readme_has_python_blocks() -> None:
    assert len(PY_BLOCKS) >= 2 and all(DEMO in b or "memray.score(" in b for b in PY_BLOCKS)


@pytest.mark.parametrize("index", range(len(PY_BLOCKS)), ids=[f"python-block-{i + 1}" for i in range(len(PY_BLOCKS))])
def test_python_block_runs(index: int, demo_out: Path) -> None:
    code = "\n".join(line for line in PY_BLOCKS[index].splitlines() if "s3://" not in line)
    code = code.replace(DEMO, str(demo_out))
    for a, b in SMALL_MODEL.items():  # a memray.audit(...) call runs on the tiny test_vit
        code = code.replace(a, b)
    ns: dict = {}
    try:
        for stmt in ast.parse(code).body:  # statement by statement, so a failure names its line
            src = ast.get_source_segment(code, stmt)
            try:
                exec(compile(ast.Module([stmt], []), "README.md", "exec"), ns)
            except Exception as exc:
                raise AssertionError(f"README python block {index + 1}: {src!r} failed: {exc!r}") from exc
    finally:
        if "memray.audit(" in code:  # the local Ray it started must not outlive the block (other tests start theirs)
            import ray

            ray.shutdown()


def test_closest_copies_snippet_ranks_one_set_one_layer(demo_out: Path) -> None:
    block = next(b for b in PY_BLOCKS if "nsmallest" in b)
    code = "\n".join(line for line in block.splitlines() if "s3://" not in line).replace(DEMO, str(demo_out))
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    tree = ast.parse(code)
    names = [
        t.id
        for s in tree.body
        if isinstance(s, ast.Assign) and "nsmallest" in ast.get_source_segment(code, s)
        for t in s.targets
        if isinstance(t, ast.Name)
    ]
    assert names, "the closest-copies snippet should assign its nsmallest(...) result to a name"
    closest = ns[names[0]]
    assert isinstance(closest, pd.DataFrame) and len(closest) == 10
    assert closest["gen_set"].nunique() == 1 and closest["layer"].nunique() == 1
    assert set(closest["role"]) == {"gen"}
    # independent check: the 10 smallest distances of that set and layer, straight from the file
    nb = pd.read_parquet(demo_out / "neighbors.parquet")
    gen_set, layer = closest["gen_set"].iloc[0], int(closest["layer"].iloc[0])
    sel = nb[(nb["role"] == "gen") & (nb["gen_set"] == gen_set) & (nb["layer"] == layer)]
    assert sorted(closest["nn_distance"]) == sorted(sel["nn_distance"])[:10]
    assert closest["sample_id"].is_unique


# ---- the output table ----


def output_table() -> dict[str, str]:
    """README output table: path (first backticked name) → the columns cell."""
    start = README.index("Every output folder holds:")
    rows = {}
    for line in README[start:].splitlines()[2:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        m = re.match(r"`([^`]+)`", cells[0])
        if m:
            rows[m.group(1)] = cells[-1]
    return rows


def test_output_table_names_every_output_and_its_columns(demo_out: Path) -> None:
    table = output_table()
    documented = {p.split("/")[0] for p in table}
    found = {p.name for p in demo_out.iterdir() if p.suffix != ".svg"}  # the plot test may have drawn one
    assert found <= documented, f"outputs missing from the README table: {sorted(found - documented)}"
    assert {"evaluation", "config.json", "gallery.parquet", "embeddings", "layers"} <= documented
    for path, cell in table.items():
        if "/" in path or not path.endswith(".parquet") or not (demo_out / path).exists():
            continue
        columns = re.match(r"`([^`]+)`", cell).group(1).split(", ")
        assert list(pd.read_parquet(demo_out / path).columns) == columns, path
    shard = next((demo_out / "embeddings" / "train").glob("shard-*.done.json"))
    assert (shard.parent / shard.name.replace(".done.json", ".errors.parquet")).exists()
    assert "within the sample's k-means cell" in README


# ---- the shell commands ----


def test_folder_audit_command_runs(tmp_path: Path) -> None:
    """The README's `memray audit --train … --gen … --out …` (no config file), on the tiny ViT."""
    (argv,) = [a for a in readme_runs(("memray", "audit")) if "--train" in a]
    argv = redirect(argv, tmp_path)
    argv[argv.index("--model") + 1] = "test_vit"
    argv = [a.replace("img_size=112", "img_size=32") for a in argv]
    argv += ["--set", "resources.actor_num_cpus=0.5", "--set", "resources.torch_threads=1", "--num-cpus", "2"]
    argv += ["--write-config", str(tmp_path / "ran.yaml")]
    printed = run(argv, timeout=540).stdout
    assert "Verdict per generated set" in printed and "Report:" in printed
    out = Path(argv[argv.index("--out") + 1])
    verdicts = pd.read_parquet(out / "verdicts.parquet").set_index("gen_set")["verdict"]
    assert verdicts["copier"] == "copying", verdicts
    assert (out / "report.html").exists() and (out / "copies.parquet").exists()
    from memray.job.config import load_audit_config

    again = load_audit_config(tmp_path / "ran.yaml")  # the YAML it ran reproduces its config
    assert again.train.urls == (str(ROOT / "data/sample/train.npz"),) and again.embed.model == "test_vit"


def test_readme_contains_the_cheap_commands() -> None:
    score = readme_runs(("memray", "score"))
    assert any("examples/features/train.npz" in a and "--kmeans-restarts" in a for a in score), score
    evaluate = readme_runs(("memray", "fingerprint", "evaluate"))
    assert any("--fid" in a and "split" in a for a in evaluate), evaluate
    assert len(evaluate) >= 3
    assert readme_runs(("python", "scripts/plot_curves.py"))
    assert readme_runs(("memray", "--version")) and readme_runs(("memray", "--help"))
    # nothing in the README writes into the tracked docs/ folder
    assert not any(t.startswith("docs/") for a in readme_runs(("python", "scripts/plot_curves.py")) for t in a)


def test_memray_score_on_example_features(tmp_path: Path) -> None:
    (argv,) = readme_runs(("memray", "score"))
    out = Path(redirect(argv, tmp_path)[argv.index("--out") + 1])
    printed = run(redirect(argv, tmp_path)).stdout
    assert "copier" in printed and "underfit" in printed
    ct = pd.read_parquet(out / "ct_scores.parquet").groupby("gen_set")["ct"]
    assert (ct.max()["copier"] < -3) and (ct.min()["underfit"] > 2)  # ≪ 0 copying; > 0 underfitting
    assert ct.apply(lambda s: s.abs().max())["fresh"] < 2  # ≈ 0: as close as fresh data


EXPECTED = {  # curve file → what the README's comment and the command's output must both say
    "layerchoice_model_ct_scores.txt": {"C_T curve": "15/18"},
    "layerchoice_full_split.csv": {"C_T curve": "6/6", "FID-nearest (scalar)": "5/6"},
    "layerchoice_Fsmall_score.txt": {"C_T curve": "5/6"},
}


def test_fingerprint_evaluate_reproduces_the_published_accuracies(tmp_path: Path) -> None:
    seen = set()
    for argv in readme_runs(("memray", "fingerprint", "evaluate")):
        curves = Path(argv[argv.index("--curves") + 1]).name
        want = EXPECTED[curves]
        printed = run(redirect(argv, tmp_path)).stdout
        comment = comment_of(argv)
        for method, acc in want.items():
            line = next(x for x in printed.splitlines() if x.startswith(method))
            assert f" {acc} " in f" {line} ", f"{curves}: {method} printed {line!r}, expected {acc}"
            assert acc in comment, f"the README's comment for {curves} should say {acc}: {comment!r}"
        if "--fid" in argv:
            assert "FID-nearest 5/6" in comment
        seen.add(curves)
    assert seen == set(EXPECTED)


def test_plot_curves_writes_into_the_run_not_docs(tmp_path: Path, demo_out: Path) -> None:
    (argv,) = readme_runs(("python", "scripts/plot_curves.py"))
    docs = ROOT / "docs" / "ct_curves.svg"
    before = docs.read_bytes() if docs.exists() else None
    run(redirect(argv, tmp_path, demo_out))
    svg = Path(redirect(argv, tmp_path, demo_out)[-1])
    assert svg.parent == demo_out and svg.read_text().startswith("<svg")
    assert (docs.read_bytes() if docs.exists() else None) == before


def test_fetch_command_saves_the_sample(tmp_path: Path, demo_out: Path) -> None:
    import numpy as np
    from PIL import Image

    (argv,) = readme_runs(("memray", "fetch"))
    argv = redirect(argv, tmp_path, demo_out)
    run(argv)
    saved = np.asarray(Image.open(argv[argv.index("-o") + 1]))
    row = int(argv[argv.index("--id") + 1].rsplit("/", 1)[1])
    np.testing.assert_array_equal(saved[:, :, 0], np.load(ROOT / "data/sample/train.npz")["images"][row])


def test_report_command_rebuilds_the_page(tmp_path: Path, demo_out: Path) -> None:
    (argv,) = readme_runs(("memray", "report"))
    (demo_out / "report.html").unlink()
    printed = run(redirect(argv, tmp_path, demo_out)).stdout
    page = (demo_out / "report.html").read_text()
    assert str(demo_out / "report.html") in printed and 'id="verdict"' in page and 'id="probes"' in page


def test_version_and_help() -> None:
    from memray import version

    (ver,) = readme_runs(("memray", "--version"))
    printed = run(ver).stdout.strip()
    assert printed == f"memray {version()}"
    assert printed in comment_of(ver), "the README's --version comment shows another version"
    (hlp,) = readme_runs(("memray", "--help"))
    printed = run(hlp).stdout
    for cmd in ("score", "embed", "fingerprint", "audit"):
        assert cmd in printed and cmd in comment_of(hlp)


def test_storage_defaults_in_the_readme_are_the_code_s() -> None:
    from memray.io import storage

    text = README
    assert f"{storage.S3_CONNECT_TIMEOUT_S} s to connect, {storage.S3_READ_TIMEOUT_S} s to wait" in text
    assert f"{storage.S3_MAX_ATTEMPTS}\n  botocore attempts" in text or f"{storage.S3_MAX_ATTEMPTS} botocore" in text
    from memray.io import filesystems

    assert f"`storage_options.op_timeout_s` (default {filesystems.OP_TIMEOUT_S:g}) seconds for every 64 MiB" in text
    assert filesystems.DEADLINE_BYTES == 64 * 2**20 and filesystems.LIST_PAGE_KEYS == 1000
    assert f"| `storage_options.op_timeout_s` | {filesystems.OP_TIMEOUT_S:g} |" in text
    assert f"with its count logged every {filesystems.LIST_PROGRESS_S:g} s" in text
