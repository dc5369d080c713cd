"""The package's import graph follows the data flow (docs/architecture.md): no cycles, no import back up a
layer, and the project's own modules imported at module level only (in-function imports are for optional
dependencies). The benchmarks (``benchmarks/``, beside the package, not installed) build on the package; the
package never imports them. Functions stay short everywhere, but for a listed few that may only shrink."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "crop_classifier"
BENCH = REPO / "benchmarks"
OWN = ("crop_classifier", "benchmarks")  # the top-level names of the project's own modules

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
    "__init__": 0, "detections": 0,
}

# The size rule: a function reads in short steps, at most MAX_LINES lines and MAX_PARAMS parameters.
MAX_LINES, MAX_PARAMS = 62, 8
# Functions over it today, with their size (lines, parameters): an entry may only shrink, and goes when its
# function is within the rule. Keys: path relative to the repository root, ":", qualified name.
OVERSIZED = {
    "crop_classifier/config.py:get_cfg": (106, 0),  # the config schema: one key per line
    "crop_classifier/data/coco.py:load_coco_samples": (67, 6),
    "crop_classifier/data/coco.py:CropDataset.__init__": (25, 11),
    "crop_classifier/data/synthetic.py:_paint_mark": (17, 9),
    "crop_classifier/data/synthetic.py:draw_object": (22, 11),
    "benchmarks/deploy.py:run_deploy": (28, 10),
    "benchmarks/memory.py:run_memory": (64, 9),
    "benchmarks/models.py:run_models": (114, 12),
    "benchmarks/pipeline.py:run_pipeline": (87, 9),
    "benchmarks/routing.py:run_routing": (29, 10),
    "benchmarks/runner.py:run_benchmark": (60, 10),
    "benchmarks/tradeoff.py:run_tradeoff": (76, 19),
    "benchmarks/video.py:run_video": (77, 15),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(*roots: Path):
    return {_module_name(p): p for root in (roots or (PKG,)) for p in root.rglob("*.py")}


def _imports(path: Path, name: str, nested: bool):
    """Project modules (package or benchmarks) imported by ``path`` (top level, or only inside functions when
    ``nested``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    top = set(id(n) for n in tree.body)
    targets = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or (id(node) in top) == nested:
            continue
        if isinstance(node, ast.Import):
            targets += [a.name for a in node.names if a.name.split(".")[0] in OWN]
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        if module.split(".")[0] in OWN:
            targets += [f"{module}.{a.name}" for a in node.names] if not node.module else [module]
    return targets


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


def test_the_package_never_imports_the_benchmarks():
    """benchmarks/ is not installed: an import of it from the package would fail in every installed copy."""
    bad = [f"{name}: {t}" for name, path in _modules().items() for nested in (False, True)
           for t in _imports(path, name, nested) if t.split(".")[0] == "benchmarks"]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    modules = _modules(PKG, BENCH)
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
    modules = _modules(PKG, BENCH)
    nested = [f"{name}: {t}" for name, path in modules.items() for t in _imports(path, name, nested=True)]
    assert not nested, "in-function imports of the project's own modules:\n" + "\n".join(nested)


def test_core_and_benchmarks_never_import_detectron2_at_module_level():
    """The core (and the benchmarks, which tools/gpu_check.sh runs without Detectron2) import Detectron2 only
    inside functions; the benchmarks never import the plugin at all at module level."""
    offenders = []
    for name, path in _modules(PKG, BENCH).items():
        if name.startswith("crop_classifier.d2"):
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(m.split(".")[0] == "detectron2" or m.startswith("crop_classifier.d2") for m in mods):
                offenders.append(name)
    assert not offenders, offenders


def _functions(tree):
    """(qualified name, node) of every function, methods as ``Class.method``, nested ones as ``outer.inner``."""
    out = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    out.append((qual, child))
                visit(child, qual + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def _sizes():
    """{key: (lines, parameters)} of every function of the package and the benchmarks."""
    sizes = {}
    for root in (PKG, BENCH):
        for f in sorted(root.rglob("*.py")):
            for qual, node in _functions(ast.parse(f.read_text())):
                a = node.args
                params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
                sizes[f"{f.relative_to(REPO).as_posix()}:{qual}"] = (node.end_lineno - node.lineno + 1, len(params))
    return sizes


def test_functions_stay_small():
    """No function over ~60 lines or ~8 parameters anywhere in the package or the benchmarks, but those of
    OVERSIZED, none of which may grow."""
    sizes = _sizes()
    big = []
    for key, (lines, params) in sizes.items():
        if lines <= MAX_LINES and params <= MAX_PARAMS:
            continue
        allowed_lines, allowed_params = OVERSIZED.get(key, (MAX_LINES, MAX_PARAMS))
        if lines > max(allowed_lines, MAX_LINES) or params > max(allowed_params, MAX_PARAMS):
            big.append(f"{key}: {lines} lines, {params} parameters")
    assert not big, "split these (or pass options as one object):\n" + "\n".join(big)


def test_the_oversized_list_only_shrinks():
    """An entry whose function went or fits the rule now leaves OVERSIZED; one that shrank lowers its figures,
    so the list states today's sizes and cannot hide growth later."""
    sizes = _sizes()
    stale = []
    for key, allowed in OVERSIZED.items():
        got = sizes.get(key)
        if got is None:
            stale.append(f"{key}: no such function any more")
        elif got[0] <= MAX_LINES and got[1] <= MAX_PARAMS:
            stale.append(f"{key}: {got[0]} lines, {got[1]} parameters is within the rule")
        elif _shrank(got, allowed):
            stale.append(f"{key}: now {got[0]} lines, {got[1]} parameters; listed as {allowed}")
    assert not stale, "update OVERSIZED:\n" + "\n".join(stale)


def _shrank(got, allowed) -> bool:
    """True when the function is smaller than listed on an axis where it is over the rule."""
    return any(g < a and a > limit for g, a, limit in zip(got, allowed, (MAX_LINES, MAX_PARAMS)))
