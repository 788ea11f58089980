"""Where code may live: no entry point imports another (what they share is in utils/ or evaluation/)."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = ("pretrain", "evaluate", "solve", "diagnose")


def imported_modules(path: str) -> set[str]:
    """The top-level names of every module a Python file imports, anywhere in it (functions included)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_no_entry_point_imports_another(entry):
    others = imported_modules(os.path.join(ROOT, f"{entry}.py")) & set(ENTRY_POINTS) - {entry}
    assert not others, f"{entry}.py imports the entry point(s) {sorted(others)}; move what they share to utils/ or evaluation/"


def test_the_import_check_sees_imports_inside_functions(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("import os\n\ndef f():\n    from evaluate import main\n    import pretrain.sub as p\n")
    assert imported_modules(str(path)) == {"os", "evaluate", "pretrain"}
