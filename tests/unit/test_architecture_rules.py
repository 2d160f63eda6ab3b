"""Architecture rules. The library never imports its front end: no module under modlab/ imports
Hydra or modlab.cli (the installed modlab.cli and modlab.conf live in cli/ and conf/, outside
this tree). Nothing outside the family registry dispatches on the architecture's name."""

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
