"""The memray command line: light start-up, --version, descriptions, one-line errors before any model is built."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from full_disk import fill_disk, needs_dev_full

from memray.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "ray", "faiss")
HELP_ARGVS = (
    ["--help"],
    ["embed", "--help"],
    ["score", "--help"],
    ["fingerprint", "--help"],
    ["fingerprint", "evaluate", "--help"],
    ["fingerprint", "gallery", "--help"],
    ["report", "--help"],
    ["probe", "--help"],
    ["fetch", "--help"],
    ["fingerprint", "attribute", "--help"],
    ["audit", "--help"],
)
MICRO = ["--model", "vit_tiny_patch16_224", "--model-kwarg=img_size=32", "--model-kwarg=patch_size=8"]


def python(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env
    )


def test_help_of_every_command_imports_no_torch_timm_ray_faiss() -> None:
    code = f"""
import json, sys
from memray.cli import main
found = {{}}
for argv in {[list(a) for a in HELP_ARGVS]!r}:
    try:
        main(argv)
    except SystemExit:
        pass
    found[" ".join(argv)] = [m for m in {HEAVY!r} if m in sys.modules]
print(json.dumps(found))
"""
    proc = python(code)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found == {" ".join(a): [] for a in HELP_ARGVS}


def test_version_is_the_installed_distributions() -> None:
    proc = python("import sys; from memray.cli import main; sys.exit(main(['--version']))")
    expected = importlib.metadata.version("memray-audit")
    assert proc.returncode == 0 and proc.stdout == f"memray {expected}\n"
    declared = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert declared is not None and expected == declared.group(1)


def _subparsers(parser: object) -> dict:
    return next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices  # type: ignore[attr-defined]


def test_embed_and_fingerprint_describe_what_they_read_and_write(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _subparsers(build_parser())
    embed = commands["embed"].description
    assert "Reads images" in embed and "--out FILE.parquet" in embed and "errors.parquet" in embed
    fingerprint = commands["fingerprint"]
    assert "Reads C_T-layer curves" in fingerprint.description
    for action, sub in _subparsers(fingerprint).items():
        assert sub.description and ("Reads" in sub.description or "Prints" in sub.description), action
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    assert "WebDataset .tar" in capsys.readouterr().out


def test_fingerprint_protocol_choices_match_the_evaluator() -> None:
    from memray.commands.fingerprint import PROTOCOLS
    from memray.fingerprint.evaluate import PROTOCOLS as EVALUATE_PROTOCOLS

    assert PROTOCOLS == EVALUATE_PROTOCOLS


@pytest.mark.parametrize("verbose", [False, True])
def test_ctrl_c_exits_130_with_one_line(verbose: bool) -> None:
    code = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job starts with SIGINT ignored
import memray.commands.fingerprint as fp
def run(args):  # stands in for a long command: a real SIGINT arrives while it runs
    signal.raise_signal(signal.SIGINT)
fp.run = run
from memray.cli import main
sys.exit(main(sys.argv[1:]))
"""
    argv = ["-v"] * verbose + ["fingerprint", "gallery", "--curves", "c.csv", "--out", "g.parquet"]
    proc = python(code, *argv)
    assert proc.returncode == 130
    assert proc.stderr.splitlines()[-1] == "memray fingerprint: interrupted"
    assert ("Traceback" in proc.stderr and "KeyboardInterrupt" in proc.stderr) is verbose
    if not verbose:
        assert proc.stderr == "memray fingerprint: interrupted\n"


# ---- memray embed: user errors are found before the model is built -------------------------------------------
@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return folder


def test_embed_checks_the_images_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "f.parquet"
    argv = ["embed", "--images", str(tmp_path / "absent"), "--out", str(out), "--weights", "s3://b/w.safetensors"]
    assert main([*argv, *MICRO]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("memray embed: error: ") and "absent" in err[0]
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--random-init", "--layers", "13"],
            r"layers=\[13\] \(embed\.layers / --layers\): this model has blocks 1…12",
        ),
        (["--random-init", "--model", "vit_nope_patch3"], "unknown timm model 'vit_nope_patch3'"),
        (["--weights", "WEIGHTS/absent.safetensors"], r"absent\.safetensors: weights file not found"),
        (["--weights", "WEIGHTS/model.pt"], r"\.pt checkpoints are pickles"),
    ],
)
def test_embed_encoder_errors_are_one_line_before_the_model_is_built(
    image_dir: Path,
    tmp_path: Path,
    extra: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    extra = [e.replace("WEIGHTS", str(tmp_path)) for e in extra]
    out = tmp_path / "f.parquet"
    assert main(["embed", "--images", str(image_dir), "--out", str(out), *MICRO, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("memray embed: error: ")
    assert re.search(message, err[0]), err[0]
    assert "measures nothing about semantics" not in caplog.text  # load_model's random_init warning: never built
    assert not out.exists()


@pytest.mark.timeout(120)
def test_embed_s3_weights_without_credentials_is_one_line(image_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "MEMRAY_S3_ENDPOINT"}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL="http://127.0.0.1:9",  # never contacted: signing fails first
    )
    url = "s3://some-bucket/vit.safetensors"
    argv = ["embed", "--images", str(image_dir), "--out", str(tmp_path / "f.parquet"), "--weights", url, *MICRO]
    proc = python("import sys; from memray.cli import main; sys.exit(main(sys.argv[1:]))", *argv, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("memray embed:")]
    assert len(lines) == 1 and lines[0].startswith(f"memray embed: error: {url}: cannot read the weights"), lines
    assert "credentials" in lines[0] and "AWS_ACCESS_KEY_ID" in lines[0]


def test_user_error_raised_in_a_ray_task_prints_its_own_message() -> None:
    """Ray re-raises a task's ValueError as a RayTaskError subclass whose text is the remote traceback."""
    from ray.exceptions import RayTaskError

    from memray.cli import _user_message

    cause = ValueError("s3://bucket/x: cannot connect; check AWS_ENDPOINT_URL")
    wrapped = RayTaskError("fn", "Traceback (most recent call last):\n  ...\nValueError: ...", cause)
    wrapped = wrapped.as_instanceof_cause()
    assert isinstance(wrapped, ValueError) and "pid=" in str(wrapped)  # the remote context, not the message
    assert _user_message(wrapped) == "s3://bucket/x: cannot connect; check AWS_ENDPOINT_URL"


@needs_dev_full
def test_a_full_disk_is_one_line_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    for name, n in (("train", 60), ("test", 30), ("gen", 30)):
        np.save(tmp_path / f"{name}.npy", rng.normal(size=(n, 8)).astype(np.float32))
    out = tmp_path / "full" / "run"
    fill_disk(monkeypatch, out)
    argv = ["score", "--train", str(tmp_path / "train.npy"), "--test", str(tmp_path / "test.npy"), "--gen",
            str(tmp_path / "gen.npy"), "--cells", "2", "--bootstrap", "0", "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert re.fullmatch(rf"memray score: error: {re.escape(str(out))}/\S+\.\w+: cannot write: no space left on device "
                        r"\(OSError: \[Errno 28\] No space left on device\); .*", err[0]), err[0]  # fmt: skip


def test_user_errors_behind_ray_wrappers_and_disk_errors_are_recognised() -> None:
    import errno

    from ray.exceptions import OutOfDiskError, RayTaskError

    from memray.cli import _user_message, user_error

    full = OSError(errno.ENOSPC, "No space left on device", "/data/out/x.parquet")
    wrapped = RayTaskError("fn", "Traceback …", full).as_instanceof_cause()
    assert user_error(full) is full and user_error(wrapped) is full
    assert user_error(RayTaskError("fn", "Traceback …", KeyError("k")).as_instanceof_cause()) is None
    assert user_error(OSError(errno.EIO, "Input/output error")) is None  # not the disk's capacity: a traceback
    ray_full = RayTaskError("fn", "Traceback …", OutOfDiskError()).as_instanceof_cause()
    assert isinstance(user_error(ray_full), OutOfDiskError)
    assert "\n" not in _user_message(ray_full) and "disk" in _user_message(ray_full)


def test_the_command_prefix_is_printed_once(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["audit", "--train", "t", "--test", "p", "--gen", "g=q", "--out", "o", "--set", "max_image_pixels=-1"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == "memray audit: error: max_image_pixels=-1: must be an integer >= 1"
