"""Architecture rules. The library never imports its front end: no module under modlab/ imports
Hydra or modlab.cli (the installed modlab.cli and modlab.conf live in cli/ and conf/, outside
this tree). Nothing outside the family registry dispatches on the architecture's name. Imports
point down the floors, with no cycles. No two modules share a file name."""

import ast
from pathlib import Path

import modlab
import modlab.cli

FORBIDDEN = ("hydra", "modlab.cli")


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_no_library_module_imports_hydra_or_the_cli():
    root = Path(modlab.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert len(files) > 40  # the walk really sees the library
    bad = [
        f"{f.relative_to(root.parent)} imports {name}"
        for f in files
        for name in imported_modules(f)
        if any(name == m or name.startswith(m + ".") for m in FORBIDDEN)
    ]
    assert not bad, "\n".join(bad)


def test_the_check_catches_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from hydra import compose\n    import modlab.cli.main\n")
    assert imported_modules(bad) == ["hydra", "modlab.cli.main"]


def arch_string_comparisons(path: Path) -> list[int]:
    """Lines where `<something>.arch` (or a name `arch`) is compared with string constants
    (`arch == "showo"`, `arch in ("lm", "hf")`): dispatch on the family's name."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        names_arch = any(
            (isinstance(s, ast.Attribute) and s.attr == "arch") or (isinstance(s, ast.Name) and s.id == "arch")
            for s in sides
        )
        strings = any(
            (isinstance(s, ast.Constant) and isinstance(s.value, str))
            or (isinstance(s, (ast.Tuple, ast.List, ast.Set)) and any(isinstance(e, ast.Constant) for e in s.elts))
            for s in sides
        )
        if names_arch and strings:
            lines.append(node.lineno)
    return lines


def test_no_dispatch_on_the_architecture_name_outside_the_registry():
    root = Path(modlab.__file__).parent
    registry = root / "families" / "__init__.py"
    cli = Path(modlab.cli.__file__).parent
    files = sorted(f for d in (root, cli) for f in d.rglob("*.py") if f != registry)
    bad = [f"{f}:{line}" for f in files for line in arch_string_comparisons(f)]
    assert not bad, "ask modlab.families instead of comparing model.arch:\n" + "\n".join(bad)


def test_the_dispatch_check_catches_a_comparison(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('def f(cfg, arch):\n    return cfg.model.arch == "showo" or arch in ("lm", "hf")\n')
    assert arch_string_comparisons(bad) == [2, 2]


# ---- imports point down ------------------------------------------------------------------------
#
# Every import of a modlab module by another one (top-level, function-local, under TYPE_CHECKING),
# read from the source with ast. Two rules: no import cycle among modlab's modules, and no import of
# a module on a higher floor than the importer's. A module's floor is its longest prefix in FLOORS.

FLOORS: tuple[tuple[str, ...], ...] = (
    # 0: what everything may use (no torch): errors, output files, progress lines, the family registry
    ("modlab", "modlab.errors", "modlab.outputs", "modlab.progress", "modlab.registry"),
    # 1: data sets, tokenizers, image codecs and row formats
    ("modlab.data",),
    # 2: where a Hugging Face decoder keeps its layers (read by routing, models and the analyses)
    ("modlab.hf_layer_map",),
    # 3: routers, routed blocks and layers, their configs and FLOPs
    ("modlab.routing",),
    # 4: the models (native and Hugging Face)
    ("modlab.models",),
    # 5: metrics, scorers, FLOPs of the native models
    ("modlab.evaluation", "modlab.flops"),
    # 6: the analyses and their jobs
    ("modlab.analysis",),
    # 7: MindSkip / Router-Tuning
    ("modlab.mindskip",),
    # 8: Lightning: modules, data modules, trainer, checkpoints
    ("modlab.training",),
    # 9: the model families (what each command does with each kind of model)
    ("modlab.families",),
    # 10: tools run as programs
    ("modlab.bench", "modlab.bench_gpu", "modlab.bench_hf", "modlab.reproduce", "modlab.real_lm"),
)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def internal_imports(path: Path, name: str, modules: set[str]) -> list[tuple[str, int, bool]]:
    """(imported modlab module, line, inside a function) for every import statement of `path`
    (module `name`): `from a.b import c` counts a.b.c where that is a module, else a.b."""
    tree = ast.parse(path.read_text(), filename=str(path))
    local = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        for n in ast.walk(f)
        if isinstance(n, ast.Import | ast.ImportFrom)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def known(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            target = known(t) if t == "modlab" or t.startswith("modlab.") else None
            if target and target != name:
                found.add((target, node.lineno, id(node) in local))
    return sorted(found)


def import_graph(root: Path) -> dict[str, list[tuple[str, int, bool]]]:
    files = {module_name(f, root): f for f in sorted(root.rglob("*.py"))}
    return {m: internal_imports(f, m, set(files)) for m, f in files.items()}


def import_cycles(graph: dict[str, list]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    edges = {m: sorted({t for t, *_ in imports}) for m, imports in graph.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(edges.get(start, ())))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(edges.get(w, ()))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def floor_of(module: str, floors=FLOORS) -> int:
    matches = [
        (len(prefix), i)
        for i, prefixes in enumerate(floors)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    if not matches:
        raise AssertionError(f"{module} has no floor in FLOORS: add it")
    return max(matches)[1]


def upward_imports(graph: dict[str, list], floors=FLOORS) -> list[str]:
    return [
        f"{m}:{line} imports {t} (floor {floor_of(m, floors)} -> {floor_of(t, floors)})"
        for m, imports in graph.items()
        for t, line, _ in imports
        if floor_of(t, floors) > floor_of(m, floors)
    ]


def library_graph():
    root = Path(modlab.__file__).parent
    return import_graph(root)


def test_no_import_cycles_among_library_modules():
    graph = library_graph()
    assert len(graph) > 40 and sum(map(len, graph.values())) > 300  # the walk really sees the library
    cycles = import_cycles(graph)
    assert not cycles, "import cycles (function-local imports count):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_imports_point_down_the_floors():
    bad = upward_imports(library_graph())
    assert not bad, "imports of a higher floor (see FLOORS):\n" + "\n".join(bad)


def synthetic_library(tmp_path: Path, files: dict[str, str]) -> dict[str, list]:
    root = tmp_path / "modlab"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(root)


def test_the_cycle_check_catches_a_cycle_through_a_function_local_import(tmp_path):
    graph = synthetic_library(
        tmp_path,
        {
            "models/__init__.py": "",
            "models/a.py": "from modlab.models import b\n",
            "models/b.py": "def f():\n    from .c import g\n",
            "models/c.py": "def g():\n    import modlab.models.a\n",
            "models/d.py": "from modlab.models.a import x\n",
        },
    )
    assert graph["modlab.models.b"] == [("modlab.models.c", 2, True)]
    assert import_cycles(graph) == [["modlab.models.a", "modlab.models.b", "modlab.models.c"]]


def test_the_floor_check_catches_an_upward_import(tmp_path):
    graph = synthetic_library(
        tmp_path,
        {
            "data/__init__.py": "",
            "data/rows.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from modlab.models.x import Y\n",
            "models/__init__.py": "",
            "models/x.py": "from modlab.data.rows import z\nfrom modlab.errors import E\n",
            "errors.py": "",
        },
    )
    assert upward_imports(graph) == ["modlab.data.rows:3 imports modlab.models.x (floor 1 -> 4)"]


# ---- no family looked up by its name outside the registry --------------------------------------
#
# A family's name (`arch`) and a directory's transformers model type (`model_type`) are keys of the
# registry (modlab.registry: FamilySpec, UnifiedSpec.model_types) and, for decoder layouts, of the
# layer map (modlab.hf_layer_map, keyed by model_type as transformers itself is). Anywhere else,
# code that compares them with a string, rewrites them (`arch.removeprefix("hf_")`,
# `name.upper()`, `"hf_" + model_type`) or indexes a table with them is a second registry.

NAME_KEYS = ("arch", "model_type")
NAME_OWNERS = ("registry.py", "families/__init__.py", "hf_layer_map.py")  # relative to modlab/
STRING_METHODS = {"upper", "lower", "removeprefix", "removesuffix", "startswith", "endswith", "replace", "split"}
CASE_METHODS = {"upper", "lower"}  # a family's `name` upper-cased into an attribute name (HF_EMU3)


def _names_a_family(node: ast.AST, keys=NAME_KEYS) -> bool:
    if isinstance(node, ast.Attribute):
        return node.attr in keys
    if isinstance(node, ast.Name):
        return node.id in keys
    if isinstance(node, ast.Subscript):  # cfg["arch"]
        return isinstance(node.slice, ast.Constant) and node.slice.value in keys
    return False


def _is_string(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)) or (
        isinstance(node, ast.Tuple | ast.List | ast.Set)
        and any(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts)
    )


def name_lookups(path: Path) -> list[str]:
    """`line: what` for each lookup of a family by its name in `path` (see above)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        what = None
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(map(_names_a_family, sides)) and any(map(_is_string, sides)):
                what = "compared with a string"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver, method = node.func.value, node.func.attr
            if (method in STRING_METHODS and _names_a_family(receiver)) or (
                method in CASE_METHODS and _names_a_family(receiver, ("name",))
            ):
                what = f".{method}() of a family's name"
            elif method == "get" and node.args and _names_a_family(node.args[0]) and not _is_dict_literal(receiver):
                what = "a table read by a family's name"
        elif isinstance(node, ast.Subscript) and _names_a_family(node.slice):
            what = "a table indexed by a family's name"
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            if any(map(_names_a_family, (node.left, node.right))) and any(map(_is_string, (node.left, node.right))):
                what = "a name built from a family's name"
        if what:
            found.append((node.lineno, what))
    return [f"{line}: {what}" for line, what in sorted(found)]


def _is_dict_literal(node: ast.AST) -> bool:
    # `(info.get("model") or {}).get("arch")` reads a checkpoint's record, not a table of families
    return isinstance(node, ast.BoolOp | ast.Call | ast.Dict)


def test_no_family_is_looked_up_by_its_name_outside_the_registry():
    root = Path(modlab.__file__).parent
    owners = {root / p for p in NAME_OWNERS}
    cli = Path(modlab.cli.__file__).parent
    files = sorted(f for d in (root, cli) for f in d.rglob("*.py") if f not in owners)
    bad = [f"{f}:{hit}" for f in files for hit in name_lookups(f)]
    assert not bad, "ask modlab.registry instead of looking a family up by its name:\n" + "\n".join(bad)


def test_the_name_lookup_check_catches_each_kind(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f(cfg, arch, name, config, model):\n"
        '    if config.model_type == "phi":\n'
        '        return arch.removeprefix("hf_")\n'
        '    impl = f"modlab.families.hf_unified_family:{name.upper()}"\n'
        "    cls = CLASSES[config.model_type] or CODECS.get(model.model_type)\n"
        '    return "hf_" + cfg["model_type"], TYPES[cfg["arch"]]\n'
        "def fine(ckpt, model):\n"
        '    return (ckpt.get("model") or {}).get("arch", "lm"), model.arch, f"model.arch={model.arch}"\n'
    )
    assert [hit.split(":")[0] for hit in name_lookups(bad)] == ["2", "3", "4", "5", "5", "6", "6"]


# ---- a file's name says its job ----------------------------------------------------------------
#
# No two modules under modlab/ share a file name (three `hf_unified.py` made a traceback or a grep
# ambiguous), but for a package's `__init__.py` and each package's own `config.py` (its settings).

SHARED_NAMES = ("__init__.py", "config.py")


def repeated_file_names(root: Path, allowed=SHARED_NAMES) -> dict[str, list[str]]:
    """{file name: its paths relative to root's parent} for each name that more than one module has."""
    by_name: dict[str, list[str]] = {}
    for f in sorted(root.rglob("*.py")):
        by_name.setdefault(f.name, []).append(str(f.relative_to(root.parent)))
    return {name: paths for name, paths in by_name.items() if len(paths) > 1 and name not in allowed}


def test_no_two_modules_share_a_file_name():
    root = Path(modlab.__file__).parent
    assert len(list(root.rglob("*.py"))) > 40  # the walk really sees the library
    repeated = repeated_file_names(root)
    assert not repeated, "modules with the same file name (name each after its job):\n" + "\n".join(
        f"{name}: {', '.join(paths)}" for name, paths in repeated.items()
    )


def test_the_name_check_catches_a_repeated_name(tmp_path):
    synthetic_library(
        tmp_path,
        {
            "models/__init__.py": "",
            "models/config.py": "",
            "models/unified.py": "",
            "training/__init__.py": "",
            "training/config.py": "",
            "training/unified.py": "",
        },
    )
    assert repeated_file_names(tmp_path / "modlab") == {
        "unified.py": ["modlab/models/unified.py", "modlab/training/unified.py"]
    }
