"""One direction of dependence: the model, then decoding (its readable reference, then its device half),
then measuring, then the views and the command line.  Every import in the package, those inside
functions included, goes down or sideways, never up."""

import ast
from pathlib import Path

import sdd_edu

PACKAGE = Path(sdd_edu.__file__).parent
LAYERS = {  # module (dotted, without "sdd_edu.") -> layer
    **{m: 0 for m in ("errors", "model", "fast", "loading", "sampling", "ngram", "data", "ladders", "draft_data",
                      "feature_draft", "measured")},
    "decoding": 1,
    "measure": 2,
    **{m: 3 for m in ("plots", "widgets", "report", "diagrams", "cli", "notebook", "course", "grade", "site",
                      "__main__", "train_draft", "train_feature_draft", "")},
}
NAMES = ["the model", "decoding", "measuring", "views and the command line"]


def layer(module: str) -> int:
    top = module.split(".")[0]
    assert module in LAYERS or top in LAYERS, f"{module!r} is in no layer: add it to LAYERS"
    return LAYERS.get(module, LAYERS.get(top))


def _is_module(dotted: str) -> bool:
    path = PACKAGE.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def package_imports():
    """(importing module, imported module, line) for every import of the package's own modules."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            here = parts
        else:
            here = parts[:-1]
        module = ".".join(parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[:len(here) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                elif node.module and node.module.startswith("sdd_edu"):
                    target = node.module[len("sdd_edu."):] if node.module != "sdd_edu" else ""
                else:
                    continue
                # "from . import roofline": a name may be a module itself, or a name in the package
                names = [f"{target}.{a.name}".lstrip(".") for a in node.names
                         if node.module is None and _is_module(f"{target}.{a.name}".lstrip("."))]
                for t in names or [target]:
                    yield module, t, node.lineno
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("sdd_edu."):
                        yield module, a.name[len("sdd_edu."):], node.lineno


def test_every_import_goes_down_the_layers():
    upward = [f"{m or 'sdd_edu'} (line {line}, {NAMES[layer(m)]}) imports {t} ({NAMES[layer(t)]})"
              for m, t, line in package_imports() if layer(t) > layer(m)]
    assert not upward, "\n".join(upward)


def test_the_reference_never_imports_the_device_half():
    """The device path mirrors the readable one and depends on it, never the other way (``decoding``
    itself, the entry that chooses between them, is the one exception)."""
    wrong = [f"{m} (line {line}) imports {t}" for m, t, line in package_imports()
             if m.startswith("decoding") and not m.startswith("decoding.device") and m != "decoding"
             and t.startswith("decoding.device")]
    assert not wrong, "\n".join(wrong)


def test_the_engine_does_not_import_its_fast_path():
    assert not [t for m, t, _ in package_imports() if m == "model" and t == "fast"]


def test_the_check_sees_imports_inside_functions():
    """The walk reaches an import inside a function body (where an import would dodge a cycle)."""
    found = {(m, t) for m, t, _ in package_imports()}
    assert ("measure.generation", "measure.roofline") in found  # "from . import roofline", at the top
    assert ("measure.bench", "measure.peers") in found  # inside run_bench()
