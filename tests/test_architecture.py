"""The package's import graph follows the data flow (docs/architecture.md): no cycles, no import back up a
layer, and the project's own modules imported at module level only (in-function imports are for optional
dependencies)."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "crop_classifier"

# Lower number = lower layer. A module may import its own layer or lower ones, never a higher one.
LAYERS = {
    "errors": 0, "structures": 0, "utils": 0,
    "config": 1, "models": 1, "crops": 1, "coco_io": 1,
    "data": 2,
    "detectors": 3,
    "second_stage": 4,
    "engine": 5,
    "deploy": 6,
    "video": 7,
    "inference": 8,
    "d2": 9,  # the Detectron2 plugin: nothing in the core imports it
    "__init__": 0,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules():
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(path: Path, name: str, nested: bool):
    """Project modules imported by ``path`` (top level, or only inside functions when ``nested``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    top = set(id(n) for n in tree.body)
    targets = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or (id(node) in top) == nested:
            continue
        if nested and _inside_type_checking(tree, node):
            continue
        if isinstance(node, ast.Import):
            targets += [a.name for a in node.names if a.name.startswith("crop_classifier")]
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        if module.startswith("crop_classifier"):
            targets += [f"{module}.{a.name}" for a in node.names] if not node.module else [module]
    return targets


def _inside_type_checking(tree, node) -> bool:
    return False


def _resolve(target: str, modules) -> str:
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def test_every_subpackage_has_a_layer():
    missing = sorted({m.split(".")[1] for m in _modules() if "." in m} - set(LAYERS))
    assert not missing, f"give these a layer in LAYERS and docs/architecture.md: {missing}"


def test_no_import_back_up_a_layer():
    modules = _modules()
    bad = []
    for name, path in modules.items():
        for t in _imports(path, name, nested=False):
            dep = _resolve(t, modules)
            if dep and dep != "crop_classifier" and _layer(dep) > _layer(name):
                bad.append(f"{name} (layer {_layer(name)}) imports {dep} (layer {_layer(dep)})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = {_resolve(t, modules) for t in _imports(path, name, nested=False)}
        # "from . import sub" names the package only to reach the submodule: the edge is to the submodule
        graph[name] = {d for d in deps if d and d != name and not name.startswith(d + ".")}
    state, cycles = {}, []

    def visit(u, stack):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                cycles.append(" -> ".join(stack[stack.index(v):] + [v]))
            elif not state.get(v):
                visit(v, stack)
        stack.pop()
        state[u] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m, [])
    assert not cycles, "\n".join(cycles)


def test_own_modules_are_imported_at_module_level_only():
    modules = _modules()
    nested = [f"{name}: {t}" for name, path in modules.items() for t in _imports(path, name, nested=True)]
    assert not nested, "in-function imports of the project's own modules:\n" + "\n".join(nested)


def test_core_never_imports_detectron2_at_module_level():
    offenders = []
    for name, path in _modules().items():
        if name.startswith("crop_classifier.d2"):
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(m.split(".")[0] == "detectron2" for m in mods):
                offenders.append(name)
    assert not offenders, offenders


def test_inference_and_second_stage_functions_stay_small():
    """The inference and second-stage path reads in short steps: no function over ~60 lines or ~8 parameters."""
    roots = ["inference", "second_stage", "detectors", "d2", "crops.py", "models/inference.py", "deploy"]
    big = []
    for root in roots:
        path = PKG / root
        files = [path] if path.is_file() else sorted(path.rglob("*.py"))
        for f in files:
            for node in ast.walk(ast.parse(f.read_text())):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                a = node.args
                params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
                lines = node.end_lineno - node.lineno + 1
                if lines > 62 or len(params) > 8:
                    big.append(f"{f.relative_to(PKG)}:{node.lineno} {node.name}: {lines} lines, {len(params)} parameters")
    assert not big, "\n".join(big)
