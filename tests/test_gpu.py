"""CUDA only (skipped elsewhere): the default GPU path (compiled) works end to end and agrees with eager,
keyed draws on the GPU are those of the CPU, and torchrun with more processes than GPUs is one error line."""
import json
import os

import pytest
import torch

import evaluate
import launch
import pretrain
from evaluation.keyed_rng import KeyedSampler
from models.eqr import ModelConfig, RecurrentReasoner
from test_compile import TINY, eval_steps
from test_eval_grid import EQR, build_model, write_checkpoint, write_data

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_keyed_draws_are_the_same_on_gpu_and_cpu():
    rows = torch.arange(64)
    draws = {}
    for device in ("cpu", "cuda"):
        sampler = KeyedSampler(3, rows.to(device), (rows % 4).to(device))
        noise = sampler.noise(torch.empty(64, 81, 32, device=device))
        start = sampler.initial_state(rows.to(device), (81, 32), torch.float32, device, 1.0)
        draws[device] = (noise.cpu(), start.cpu())
    for cpu, gpu in zip(draws["cpu"], draws["cuda"]):
        torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-5)  # same bits; erfinv may differ in the last ulp


def test_inductor_eval_step_is_close_to_eager_on_gpu():
    torch.manual_seed(0)
    core = RecurrentReasoner(ModelConfig(**TINY, forward_dtype="float32")).cuda().eval().inner
    inputs = torch.randint(1, 6, (4, 16), device="cuda")
    with torch.inference_mode():
        z = torch.randn(4, 16, 32, device="cuda")
    torch._dynamo.reset()
    compiled = torch.compile(core, fullgraph=True, dynamic=False)
    for a, b in zip(eval_steps(core, z, inputs), eval_steps(compiled, z, inputs)):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)


def test_evaluate_and_train_run_compiled_on_the_gpu_by_default(tmp_path, capsys):
    head = build_model(EQR, q_weight_std=0.5)
    data = write_data(str(tmp_path / "data"), head, n=8)
    ckpt = write_checkpoint(str(tmp_path / "step_1.pt"), head, data)
    out = tmp_path / "eval"
    assert evaluate.main([f"checkpoint={ckpt}", f"output_dir={out}", "depths=[1,2]", "breadths=[1,2]",
                          "global_batch_size=4", "progress=false", "plots=false"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["device"] == torch.cuda.get_device_name() and results["data"]["puzzles"] == 8
    assert "compiled" in capsys.readouterr().err

    from dataset import build_sudoku_dataset
    sudoku = str(tmp_path / "sudoku")
    build_sudoku_dataset.main(["--generate", "32", "--generate-test", "8", "--num-aug", "0", "--output-dir", sudoku])
    assert pretrain.main(["--config-name", "train/eqr_sudoku_cpu", f"data_path={sudoku}", f"checkpoint_path={tmp_path / 'run'}",
                          "max_steps=3", "global_batch_size=8", "eval_interval_steps=3", "eval_max_examples=8",
                          "wandb_mode=disabled"]) == 0
    assert ", compiled" in capsys.readouterr().err
    assert (tmp_path / "run" / "step_3.pt").exists()


def test_more_processes_than_gpus_is_one_error_line(tmp_path):
    nproc = torch.cuda.device_count() + 1
    done = launch.launch("evaluate.py", f"checkpoint={tmp_path / 'x.pt'}", nproc=nproc, timeout=180)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and len(errors) == 1
    assert f"{nproc} processes on this node but only {nproc - 1} GPU(s)" in errors[0]
    assert not os.path.exists(tmp_path / "x.pt")
