"""The package tree's import direction: commands → api → ray → job → report → stages (embedding, stats → fingerprint,
probes) → io → config.

Every ``import`` in memray/ (module level or inside a function) is read with :mod:`ast` and checked against the
layer table below; only ``memray.ray`` may import Ray.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "memray"

#: Each layer → the layers its modules may import (itself included).
ALLOWED: dict[str, set[str]] = {
    "base": {"base"},
    "config": {"base", "config"},
    "io": {"base", "config", "io"},
    "embedding": {"base", "config", "io", "embedding"},
    "stats": {"base", "config", "io", "stats"},
    "fingerprint": {"base", "config", "io", "stats", "fingerprint"},
    "probes": {"base", "config", "io", "probes"},
    "report": {"base", "config", "io", "stats", "fingerprint", "probes", "report"},
    "job": {"base", "config", "io", "embedding", "stats", "fingerprint", "probes", "report", "job"},
    "ray": {"base", "config", "io", "embedding", "stats", "fingerprint", "probes", "report", "job", "ray"},
    "api": {"base", "config", "io", "embedding", "stats", "fingerprint", "probes", "report", "job", "ray", "api"},
    "commands": {
        "base",
        "config",
        "io",
        "embedding",
        "stats",
        "fingerprint",
        "probes",
        "report",
        "job",
        "ray",
        "api",
        "commands",
    },
    "cli": {"base", "commands", "cli"},
}
CONFIG = {"memray.config"}  # the generic field checking; each stage keeps its own config module


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer(module: str) -> str:
    """The layer of a memray module: its stage package, or its top-level role."""
    if module in CONFIG:
        return "config"
    parts = module.split(".")
    if module == "memray":
        return "base"
    if parts[1] in ("cli", "api"):
        return parts[1]
    if parts[1] not in ALLOWED:
        raise AssertionError(f"{module} is in no layer: add it to the table in {__file__}")
    return parts[1]


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in the file; ``from memray import x`` names memray.x when x is a module."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports"
            base = node.module or ""
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            out += [(node.lineno, m) for m in subs] or [(node.lineno, base)]
    return out


def violations() -> list[str]:
    bad = []
    for mod, path in MODULES.items():
        own = layer(mod)
        for line, target in imports(path):
            where = f"{path.relative_to(ROOT.parent)}:{line}: {mod} ({own}) imports {target}"
            if target == "ray" or target.startswith("ray."):
                if own != "ray":
                    bad.append(where + " (only memray.ray imports Ray)")
            elif target == "memray" or target.startswith("memray."):
                if target not in MODULES:
                    bad.append(where + " (no such module)")
                elif layer(target) not in ALLOWED[own]:
                    bad.append(f"{where} ({layer(target)})")
    return bad


def test_every_module_has_a_layer() -> None:
    assert {layer(m) for m in MODULES} <= set(ALLOWED)


def test_imports_flow_one_way() -> None:
    assert violations() == []


@pytest.mark.parametrize("package", ["io", "embedding", "stats", "fingerprint", "probes", "report", "job", "ray",
                                     "commands"])  # fmt: skip
def test_stage_packages_exist(package: str) -> None:
    assert f"memray.{package}" in MODULES


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """A stage module importing Ray, and io importing a stage, are both reported (the check is not vacuous)."""
    src = tmp_path / "m.py"
    src.write_text("import ray\n\ndef f():\n    from memray.stats import score\n    import memray.ray.pipeline\n")
    found = imports(src)
    assert found == [(1, "ray"), (4, "memray.stats.score"), (5, "memray.ray.pipeline")]
    assert "stats" not in ALLOWED["io"] and "ray" not in ALLOWED["stats"]
