"""Small datasets built once per test session by the real builders (offline), shared by the data tests."""
import os

import pytest

from dataset import build_maze_unique_dataset, build_sudoku_dataset

SUDOKU_AUG = 4  # augmented copies per training puzzle in the small Sudoku set


@pytest.fixture(scope="session")
def sudoku_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data") / "sudoku-small")
    build_sudoku_dataset.main(["--output-dir", path, "--generate", "40", "--generate-test", "13",
                               "--num-aug", str(SUDOKU_AUG), "--min-givens", "30", "--seed", "0"])
    return path


@pytest.fixture(scope="session")
def maze_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data") / "maze-small")
    build_maze_unique_dataset.main(["--output-dir", path, "--grid-size", "12", "--train-samples", "60",
                                    "--test-samples", "30", "--min-path-length", "8", "--max-path-length", "24"])
    return path


def copy_dataset(src: str, dst: str) -> str:
    """A writable copy of a dataset folder, for tests that damage it."""
    import shutil
    shutil.copytree(src, dst)
    return dst


def array_path(data_dir: str, split: str, name: str) -> str:
    return os.path.join(data_dir, split, f"all__{name}.npy")
