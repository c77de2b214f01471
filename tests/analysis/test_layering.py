"""One door per layer: the analysis and the geometry reach models only through
HookedModel's public API, and kernels only through verilens.ops."""
import ast
from pathlib import Path

import pytest

import verilens

PKG = Path(verilens.__file__).parent
FILES = sorted(p for d in ("analysis", "geometry") for p in (PKG / d).rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_way_around_hooked_model(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [("." * node.level) + (node.module or "")]
        else:
            names = []
        for n in names:
            assert not n.split(".")[0] == "transformers", f"{path.name} imports {n}"
            assert "kernels" not in n.split("."), f"{path.name} imports {n}: kernels go through verilens.ops"
        if isinstance(node, ast.Attribute):
            assert node.attr != "hf_model", f"{path.name}:{node.lineno} touches .hf_model"
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            assert not (owner == "model" and node.attr.startswith("_")), \
                f"{path.name}:{node.lineno} calls HookedModel's private model.{node.attr}"
