"""The import contract: core -> data, models -> theory -> probes -> runs (DESIGN.md).

A module may import only from its own layer or the layers before it, and ``data`` and
``models`` (one layer) not from each other; so ``theory/`` takes the contextual-layer
interface and imports nothing from ``models/``, and ``models/`` nothing from ``theory/``.
Imports are read with ``ast`` (every ``import`` and ``from ... import`` in a file, also inside
functions), so an import that only runs late still counts.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: where each package's files live (callbacks/ is installed as icl_lightning.callbacks)
SOURCES = {"icl_lightning": ROOT / "icl_lightning", "icl_lightning.callbacks": ROOT / "callbacks"}
#: the layers, first to last; a package not named here is part of "runs"
LAYERS = {
    "core": ["checks", "plotting", "loggers", "profiling", "allocator"],
    "data, models": ["data", "models"],
    "theory": ["theory"],
    "probes": ["callbacks", "modules"],
}
ORDER = [*LAYERS, "runs"]


def layer(module: str) -> tuple[int, str]:
    """``(rank in ORDER, package)`` of a module ``icl_lightning.<package>...``."""
    package = module.split(".")[1] if "." in module else ""
    for rank, name in enumerate(LAYERS):
        if package in LAYERS[name]:
            return rank, package
    return len(LAYERS), package


def imports(path: Path) -> set[str]:
    """The absolute ``icl_lightning`` modules a file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top = node.module == "icl_lightning"  # from icl_lightning import checks
            found |= {f"{node.module}.{a.name}" for a in node.names} if top else {node.module}
    return {name for name in found if name.split(".")[0] == "icl_lightning"}


def violations(sources: dict[str, Path]) -> list[str]:
    """``"<module> (<layer>) imports <module> (<layer>)"`` for every import against the order."""
    found = []
    for package, root in sources.items():
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            module = ".".join((package, *parts)).removesuffix(".__init__")
            rank, name = layer(module)
            for target in sorted(imports(path)):
                target_rank, target_name = layer(target)
                sideways = rank == target_rank == 1 and name != target_name  # data <-> models
                if target_rank > rank or sideways:
                    found.append(
                        f"{module} ({ORDER[rank]}) imports {target} ({ORDER[target_rank]})"
                    )
    return found


def test_imports_follow_the_layers():
    assert violations(SOURCES) == []


def test_the_contract_catches_a_model_importing_the_theory(tmp_path):
    """The check can fail: a models/ file importing theory/, and data/ importing models/."""
    (tmp_path / "models").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "models" / "m.py").write_text(
        "def f():\n    from icl_lightning.theory.gd import one_step_gd\n"
    )
    (tmp_path / "data" / "d.py").write_text("import icl_lightning.models.lsa\n")
    (tmp_path / "theory.py").write_text("from icl_lightning import checks\n")  # allowed
    assert violations({"icl_lightning": tmp_path}) == [
        "icl_lightning.data.d (data, models) imports icl_lightning.models.lsa (data, models)",
        "icl_lightning.models.m (data, models) imports icl_lightning.theory.gd (theory)",
    ]
