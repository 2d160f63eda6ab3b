"""The library never imports its front end: no module under modlab/ imports Hydra or modlab.cli
(the installed modlab.cli and modlab.conf live in cli/ and conf/, outside this tree)."""

import ast
from pathlib import Path

import modlab

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
