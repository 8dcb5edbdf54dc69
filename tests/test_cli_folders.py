"""`memray audit` / `memray probe` from folders (no config file): argument parsing and the configs they build, no Ray.

The full folder run is the README's command (tests/test_readme.py::test_folder_audit_command_runs).
"""

from pathlib import Path

import pytest

import memray.job.run
from memray.cli import build_parser, main
from memray.commands.probe import probe_config
from memray.config import ConfigError
from memray.job.config import audit_config_from_dict

ROOT = Path(__file__).resolve().parents[1]
S = ROOT / "data" / "sample"
BASE = ["audit", "--train", str(S / "train.npz"), "--test", str(S / "test.npz"), "--out", "/tmp/x"]


class _Ran(Exception):
    """Raised by the stand-in job runner: carries the config `memray audit` would have run."""

    def __init__(self, cfg) -> None:
        super().__init__("stand-in job runner")
        self.cfg = cfg


def _fake_run_job(cfg, *args, **kwargs):
    raise _Ran(cfg)


@pytest.fixture
def audit_cfg(monkeypatch: pytest.MonkeyPatch):
    """``memray audit ARGV`` up to the job: the config it would run (no Ray is started)."""
    monkeypatch.setattr(memray.job.run, "run_job", _fake_run_job)

    def config_of(argv: list[str]):
        with pytest.raises(_Ran) as ran:
            main(argv)
        return ran.value.cfg

    return config_of


def test_folders_build_the_paper_defaults_with_labels_kept_as_typed(audit_cfg) -> None:
    cfg = audit_cfg([*BASE, "--gen", f"a={S / 'gmm_k20.npz'}", "--gen", f"b={S / 'kde_bw64.npz'}", "--label", "a=1.10"])
    assert [g.name for g in cfg.generated] == ["a", "b"]
    assert cfg.generated[0].label == "1.10" and cfg.generated[1].label is None  # not YAML-parsed to 1.1
    assert cfg.embed.model == "vit_base_patch16_224.orig_in21k" and cfg.ct.mode == "paper" and cfg.ct.cells == 10
    assert cfg.train.urls == (str(S / "train.npz"),)


def test_encoder_input_flags_set_the_embed_fields(tmp_path: Path, audit_cfg) -> None:
    flags = ["--pooling", "auto", "--mean", "0.5", "--std", "0.25", "--resize", "72", "--crop", "64"]
    cfg = audit_cfg([*BASE, "--gen", f"a={S / 'gmm_k20.npz'}", *flags])
    e = cfg.embed
    assert (e.pooling, e.mean, e.std, e.resize, e.crop) == (("auto",), (0.5,), (0.25,), 72, 64)
    (tmp_path / "c.yaml").write_text(
        f"train: {{name: train, urls: [{S / 'train.npz'}]}}\ntest: {{name: test, urls: [{S / 'test.npz'}]}}\n"
        f"generated: [{{name: a, urls: [{S / 'gmm_k20.npz'}]}}]\noutput: /tmp/x\nembed: {{mean: [0.1, 0.2, 0.3]}}\n"
    )
    from_file = audit_cfg(["audit", "--config", str(tmp_path / "c.yaml"), "--std", "0.3,0.2,0.1"])
    assert from_file.embed.mean == (0.1, 0.2, 0.3) and from_file.embed.std == (0.3, 0.2, 0.1)
    with pytest.raises(SystemExit):
        audit_cfg([*BASE, "--mean", "0.5,x"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--gen", "a=x", "--gen", "a=y"], "given twice"),
        (["--gen", "noequals"], "use NAME=DIR_OR_URL"),
        (["--gen", "a=x", "--label", "b=fam"], "no --gen set of that name"),
        ([], "give --gen"),
    ],
)
def test_bad_folder_arguments_say_what_to_do(
    extra: list[str], message: str, audit_cfg, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*BASE, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memray audit: error:") and message in err and err.count("\n") == 1


def test_config_and_folders_together_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--config", "jobs/configs/default.yaml", "--train", "x"]) == 2
    assert "either --config or" in capsys.readouterr().err


def test_probe_sets_names_are_reserved() -> None:
    data = {
        "train": {"name": "train", "urls": [str(S / "train.npz")]},
        "test": {"name": "test", "urls": [str(S / "test.npz")]},
        "generated": [{"name": "probe_sd15", "urls": [str(S / "gmm_k20.npz")]}],
        "output": "/tmp/out",
    }
    with pytest.raises(ConfigError, match="reserved for the probe sets"):
        audit_config_from_dict(data)
    data["generated"] = [{"name": "probe_copies", "urls": ["/tmp/out/probes/copies.tar"]}]
    assert audit_config_from_dict(data).generated[0].name == "probe_copies"  # the probe set itself is fine
    emb = {**data, "train": {"name": "train", "embeddings": ["/tmp/feats"]}, "probes": {}}
    with pytest.raises(ConfigError, match="training images"):
        audit_config_from_dict(emb)


def test_probe_config_from_folders_and_from_a_config() -> None:
    args = build_parser().parse_args(["probe", "--train", str(S / "train.npz"), "--test", str(S / "test.npz"),
                                      "--out", "/tmp/p", "--random-init", "--model", "test_vit", "--probes",
                                      "copies,rotated", "--n", "50"])  # fmt: skip
    cfg = probe_config(args)
    assert cfg.generated == () and cfg.probes.probes == ("copies", "rotated") and cfg.probes.n == 50
    args = build_parser().parse_args(["probe", "--config", "jobs/configs/default.yaml"])
    cfg = probe_config(args)
    assert cfg.generated == () and cfg.fingerprint is None and cfg.output.endswith("demo_probes")


@pytest.mark.timeout(600)
def test_memray_probe_command_end_to_end(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import pandas as pd

    out = tmp_path / "probes"
    argv = [sys.executable, "-m", "memray.cli", "probe", "--train", str(S / "train.npz"), "--test",
            str(S / "test.npz"), "--out", str(out), "--model", "test_vit", "--random-init", "--set",
            "embed.model_kwargs.img_size=32", "--set", "resources.actor_num_cpus=0.5", "--set", "ct.bootstrap=0",
            "--probes", "copies,shuffled", "--n", "300", "--num-cpus", "2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_parquet(out / "probes.parquet")
    assert set(table["probe"]) == {"copies", "shuffled"} and (table["n"] == 300).all()
    assert (table[table["probe"] == "copies"]["ct"] < -3).all()
    assert "Probe C_T per layer" in proc.stdout and "copies       detected at layers 1," in proc.stdout
    assert (out / "report.html").exists() and (out / "probes" / "manifest.json").exists()
