"""scripts/compare_official.py against the official TRM's and HRM's code, where checkouts of it are at hand.

TRM_CHECKOUT / HRM_CHECKOUT name checkouts of github SamsungSAILMontreal/TinyRecursiveModels and
sapientinc/HRM (their code is never part of this repository; nothing is downloaded here).
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("model, variable", [("trm", "TRM_CHECKOUT"), ("hrm", "HRM_CHECKOUT")])
def test_our_model_matches_their_code_bit_for_bit(model, variable):
    checkout = os.environ.get(variable)
    if not checkout:
        pytest.skip(f"{variable} is not set (a checkout of their code); scripts/compare_official.py needs it")
    done = subprocess.run([sys.executable, "scripts/compare_official.py", f"--{model}", checkout, "--steps", "3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "all identical" and sum(": identical, 3 steps" in line for line in lines) == 8
