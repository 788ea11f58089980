"""Each file torch pickles has one owner module: no other non-test Python file (scripts/ included) calls
torch.load, torch.save or atomic_save (torch.save through a temp file)."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Who may read or write a torch-pickled file, and what. A helper moving a format's reader or writer edits this.
OWNERS = {
    "utils/checkpoint.py": "checkpoints: a run's shards, shipped copies, the authors' files",
    "utils/files.py": "atomic_save itself, which the owners here write with",
    "evaluation/sweep.py": "the partial files of the grid's, the elastic pool's and the diagnostics' sweeps",
    "evaluation/predictions.py": "predictions.npz and its chunks in partial/",
}
RAW_CALLS = ("torch.load", "torch.save", "torch.serialization.load", "torch.serialization.save", "atomic_save")
NOT_SOURCE = {"tests", "data", "outputs", "downloaded_checkpoints", "checkpoints", "wandb", "eval_results", "build"}


def dotted(node) -> str:
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def raw_io(root: str) -> list[str]:
    """`path:line: name` of each call of RAW_CALLS (or import of torch's load/save) outside OWNERS; strings and
    comments that mention them do not count."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith((".", "_")) and d not in NOT_SOURCE)
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.relpath(os.path.join(folder, name), root)
            if path in OWNERS:
                continue
            with open(os.path.join(root, path)) as f:
                tree = ast.parse(f.read(), path)
            for node in sorted(ast.walk(tree), key=lambda n: getattr(n, "lineno", 0)):
                if isinstance(node, ast.Call):
                    call = dotted(node.func)
                    if call in RAW_CALLS or call.endswith(".atomic_save"):
                        found.append(f"{path}:{node.lineno}: {call}")
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch"):
                    found += [f"{path}:{node.lineno}: from {node.module} import {a.name}" for a in node.names
                              if a.name in ("load", "save")]
    return found


def test_only_the_owners_load_or_save_with_torch():
    assert all(os.path.isfile(os.path.join(ROOT, path)) for path in OWNERS), "an owner moved: update OWNERS"
    assert raw_io(ROOT) == []


def test_a_raw_load_in_a_script_is_found(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "utils").mkdir()
    (tmp_path / "scripts" / "peek.py").write_text(
        '"""Mentions torch.load(path) in prose only."""\nimport torch\n\n'
        'def peek(path):\n    return torch.load(path, weights_only=True)["step"]\n')
    (tmp_path / "scripts" / "ship.py").write_text("from torch import save\nfrom utils import files\n"
                                                  "files.atomic_save({}, 'x.pt')\n")
    (tmp_path / "utils" / "checkpoint.py").write_text("import torch\ntorch.save({}, 'x.pt')\n")  # an owner
    assert raw_io(str(tmp_path)) == ["scripts/peek.py:5: torch.load", "scripts/ship.py:1: from torch import save",
                                     "scripts/ship.py:3: files.atomic_save"]
