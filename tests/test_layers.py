"""Imports between the package's stage folders run one way only: a folder imports lower layers, never higher ones
or its peers (so a batch's path never goes data -> cache -> data, and no library code depends on the CLI)."""

from __future__ import annotations

import ast
from pathlib import Path

import ltx2_tuner

PACKAGE = Path(ltx2_tuner.__file__).parent
# Layer of each top-level module or folder; a module may import its own folder and strictly lower layers.
LAYERS = {
    "errors": 0, "dtypes": 0, "flags": 0,
    "roles": 1,
    "models": 2, "data": 2,
    "cache": 3, "networks": 3, "conditioning": 3,
    "sampling": 4,
    "training": 5,
    "testing": 6,
    "cli": 7,
}  # fmt: skip


def _imported_parts(path: Path) -> set[str]:
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            if name.startswith("ltx2_tuner."):
                parts.add(name.split(".")[1])
    return parts


def test_every_module_has_a_layer():
    top_level = {p.stem for p in PACKAGE.iterdir() if (p.suffix == ".py" or p.is_dir()) and not p.name.startswith("_")}
    assert top_level - {"egg-info"} <= set(LAYERS), f"give these a layer: {top_level - set(LAYERS)}"


def test_imports_point_down_the_layers():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        owner = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if owner not in LAYERS:
            continue
        for part in _imported_parts(path):
            if part != owner and part in LAYERS and LAYERS[part] >= LAYERS[owner]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports ltx2_tuner.{part}")
    assert not wrong, "\n".join(wrong)
