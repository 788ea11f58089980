"""pretrain.py on tiny generated data: learning, checkpoint contents, bit-exact resume after SIGKILL, config errors."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import fields

import matplotlib.image
import pytest
import torch

import evaluate
import pretrain
from dataset import build_sudoku_dataset, common
from models.eqr import ModelConfig, RecurrentReasoner
from models.losses import ACTLossHead
from tests.data_fixtures import maze_dir  # noqa: F401 (fixture)
from utils.run_folder import EVAL, TRAIN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_ARCH = ["arch.hidden_size=32", "arch.num_heads=2", "arch.L_layers=1", "arch.H_cycles=2", "arch.L_cycles=1",
             "arch.halt_max_steps=3", "arch.forward_dtype=float32", "arch.mlp_t=true"]


@pytest.fixture(scope="module")
def sudoku_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data") / "sudoku")
    build_sudoku_dataset.main(["--generate", "48", "--generate-test", "16", "--num-aug", "1", "--min-givens", "50",
                               "--output-dir", path])
    return path


def overrides(data_path, run_dir, *extra):
    return ["data_path=" + data_path, "checkpoint_path=" + str(run_dir), "device=cpu", "wandb_mode=disabled",
            "global_batch_size=8", "eval_batch_size=8", "eval_max_examples=16", *TINY_ARCH, *extra]


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(run_dir):
    return [(m["step"], m[TRAIN["lm_loss"]], m[TRAIN["q_halt_loss"]]) for m in read_metrics(run_dir) if TRAIN["lm_loss"] in m]


def test_a_few_steps_lower_the_loss(sudoku_path, tmp_path):
    run = tmp_path / "run"
    rc = pretrain.main(["--config-name", "train/eqr_sudoku", *overrides(sudoku_path, run, "max_steps=100", "lr=1e-2",
                        "lr_warmup_steps=1", "weight_decay=0", "log_interval_steps=1", "eval_interval_steps=50",
                        "checkpoint_interval_steps=50")])
    assert rc == 0
    losses = [loss for _, loss, _ in train_losses(run)]
    assert len(losses) == 100
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5
    evals = [m for m in read_metrics(run) if EVAL["exact_accuracy"] in m]
    assert [m["step"] for m in evals] == [50, 100] and all(m[EVAL["count"]] == 16 for m in evals)
    assert 0 < evals[-1][EVAL["accuracy"]] <= 1
    curves = matplotlib.image.imread(run / "training_curves.png")  # drawn by pretrain.py at the end of the run
    assert curves.shape[0] > 400 and curves.std() > 0.05  # a picture with content, not a blank canvas


def test_checkpoint_rebuilds_the_model_from_the_file_alone(sudoku_path, tmp_path):
    run = tmp_path / "run"
    assert pretrain.main(["--config-name", "train/trm_sudoku", *overrides(sudoku_path, run, "max_steps=3",
                          "checkpoint_interval_steps=2", "eval_interval_steps=null")]) == 0
    with open(run / "latest") as f:
        assert f.read().strip() == "step_3.pt"
    assert sorted(os.listdir(run)) == [".lock", "config.yaml", "latest", "metrics.jsonl", "step_2.pt", "step_3.pt",
                                       "training_curves.png"]
    ckpt = torch.load(run / "step_3.pt", weights_only=True)
    assert ckpt["format"] == "eqr/1" and ckpt["step"] == 3 and ckpt["world_size"] == 1
    assert {f.name for f in fields(ModelConfig)} <= set(ckpt["config"]["arch"])
    assert ckpt["config"]["arch"]["seq_len"] == 81 and ckpt["config"]["arch"]["vocab_size"] == 11
    assert set(ckpt["rng"]) == {"torch", "numpy", "python"} and ckpt["loader"]["step_in_epoch"] >= 0
    assert ckpt["carry"]["z_H"].shape == (8, 81, 32) and ckpt["ema"]["rate"] == 0.999

    config = ModelConfig.from_dict(ckpt["config"]["arch"])
    head = ACTLossHead(RecurrentReasoner(config), ckpt["config"]["arch"]["loss"]["loss_type"])
    head.load_state_dict(ckpt["model"])  # strict: every name matches, TRM's fixed latents included
    assert torch.equal(head.model.inner.H_init, ckpt["model"]["model.inner.H_init"])


def test_in_training_evaluation_is_the_evaluators_cell_at_the_trained_depth_and_breadth_1(sudoku_path, tmp_path):
    """eval/* of a run equal, to the last bit, evaluate.py's D = halt_max_steps, B = 1 cell on the same weights
    with torch's generator and the same seed (EqR: random initial latents and path noise; a padded last batch)."""
    run = tmp_path / "run"
    assert pretrain.main(["--config-name", "train/eqr_sudoku", *overrides(sudoku_path, run, "max_steps=4", "lr=1e-2",
                          "eval_interval_steps=4", "eval_batch_size=6")]) == 0
    logged = [m for m in read_metrics(run) if EVAL["accuracy"] in m]
    assert [m["step"] for m in logged] == [4]
    assert evaluate.main([f"checkpoint={run / 'step_4.pt'}", f"output_dir={tmp_path / 'eval'}", "rng=torch", "device=cpu",
                          "global_batch_size=6", "progress=false", "plots=false"]) == 0
    with open(tmp_path / "eval" / "results.json") as f:
        cell = json.load(f)["rows"][0]
    assert (cell["depth"], cell["breadth"], cell["rule"], cell["total"]) == (3, 1, "traj1", 16)
    assert logged[0][EVAL["count"]] == cell["total"] and logged[0][EVAL["exact_accuracy"]] == cell["accuracy"]
    assert logged[0][EVAL["accuracy"]] == cell["token_accuracy"] and 0 < cell["token_accuracy"] < 1


def test_each_split_is_read_once_per_process(sudoku_path, tmp_path, monkeypatch):
    """Set-up and every evaluation share one opened split: each split's dataset.json is read once in a run that
    evaluates twice, and the test split's once in evaluate.py's pass (every read of a split goes through it)."""
    reads, read = [], common.load_metadata
    monkeypatch.setattr(common, "load_metadata", lambda path, split: reads.append(split) or read(path, split))
    run = tmp_path / "run"
    assert pretrain.main(["--config-name", "train/eqr_sudoku", *overrides(sudoku_path, run, "max_steps=2",
                                                                          "eval_interval_steps=1")]) == 0
    assert sorted(reads) == ["test", "train"] and len([m for m in read_metrics(run) if EVAL["count"] in m]) == 2
    reads.clear()
    assert evaluate.main([f"checkpoint={run / 'step_2.pt'}", f"data_path={sudoku_path}", f"output_dir={tmp_path / 'eval'}",
                          "device=cpu", "progress=false", "plots=false"]) == 0
    assert reads == ["test"]


def run_cli(args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "pretrain.py", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
def test_resume_after_sigkill_repeats_the_uninterrupted_losses_bit_exactly(sudoku_path, tmp_path):
    # EqR (random latents, noise, halting exploration) so that every random stream matters.
    common = ["--config-name", "train/eqr_sudoku", "max_steps=60", "log_interval_steps=1", "checkpoint_interval_steps=10",
              "eval_interval_steps=15", "lr=1e-3", "lr_warmup_steps=5", "lr_min_ratio=0.1"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run_cli([*common, *overrides(sudoku_path, full)]).wait() == 0

    proc = run_cli([*common, *overrides(sudoku_path, killed)])
    latest = killed / "latest"
    while not latest.exists() and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    stopped_at = int(latest.read_text().strip().removeprefix("step_").removesuffix(".pt"))
    assert stopped_at < 60

    resumed = run_cli([*common, *overrides(sudoku_path, killed), "resume=true"])
    assert resumed.wait() == 0, resumed.stderr.read()
    assert train_losses(killed) == train_losses(full)  # exact float equality, step for step
    assert [m for m in read_metrics(killed) if EVAL["accuracy"] in m] == [m for m in read_metrics(full) if EVAL["accuracy"] in m]


@pytest.mark.parametrize("extra, expected", [
    (["foo=1"], "foo: unknown config key"),
    (["+foo=1"], "foo: unknown config key"),
    (["arch.hiden_size=64"], "arch.hiden_size"),
    (["+arch.hiden_size=64"], "arch.hiden_size: unknown model option"),
    (["arch.vocab_size=12"], "arch.vocab_size: set to 12 but the dataset"),
    (["arch.seq_len=900"], "arch.seq_len: set to 900"),
    (["arch=nope"], "arch/nope"),
    (["global_batch_size=0"], "global_batch_size: expected a positive integer"),
    (["resume=true", "checkpoint_path=null"], "resume: needs run_name"),
    (["arch.loss.loss_type=mse"], "arch.loss.loss_type"),
    (["compile=maybe"], "compile: expected true/false or null, got 'maybe'"),
    (["compile=1"], "compile: expected true/false or null, got 1"),
    (["lr=abc"], "lr: expected a number, got 'abc'"),
    (["beta1=abc"], "beta1: expected a number"),
    (["weight_decay=abc"], "weight_decay: expected a number"),
    (["lr_min_ratio=abc"], "lr_min_ratio: expected a number"),
    (["arch.lambda_=abc"], "arch.lambda_: expected a number, got 'abc'"),
    (["arch.mlp_t=maybe"], "arch.mlp_t: expected true/false"),
    (["ema=maybe"], "ema: expected true/false, got 'maybe'"),
    (["resume=maybe"], "resume: expected true/false"),
    (["ema_rate=2"], "ema_rate: expected a value in [0, 1), got 2"),
    (["lr=-1"], "lr: expected a value in (0, inf), got -1"),
])
def test_bad_config_fails_at_start_with_one_line(sudoku_path, tmp_path, capsys, extra, expected):
    rc = pretrain.main(["--config-name", "train/eqr_sudoku", *overrides(sudoku_path, tmp_path / "run"), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("cpu_flags", [None, {"avx2", "fma"}])  # this machine's CPU, and one without bf16 units
def test_missing_data_path_fails_with_one_line(tmp_path, capsys, monkeypatch, cpu_flags):
    if cpu_flags is not None:  # the dtype notice must not come before the error line
        import utils.processes
        monkeypatch.setattr(utils.processes, "cpu_flags", lambda: cpu_flags)
    rc = pretrain.main(["--config-name", "train/eqr_sudoku", f"dataset.data_path={tmp_path}/nowhere", "wandb_mode=disabled"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {tmp_path}/nowhere/train/dataset.json: missing")


def test_resume_needs_a_checkpoint_and_a_fresh_run_refuses_to_overwrite(sudoku_path, tmp_path, capsys):
    run = tmp_path / "run"
    assert pretrain.main(["--config-name", "train/eqr_sudoku", *overrides(sudoku_path, run, "resume=true")]) == 2
    assert "no checkpoint to resume" in capsys.readouterr().err
    assert pretrain.main(["--config-name", "train/eqr_sudoku", *overrides(sudoku_path, run, "max_steps=1")]) == 0
    capsys.readouterr()
    assert pretrain.main(["--config-name", "train/eqr_sudoku", *overrides(sudoku_path, run, "max_steps=2")]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    # A changed architecture cannot continue the run.
    assert pretrain.main(["--config-name", "train/eqr_sudoku", *overrides(sudoku_path, run, "max_steps=2", "resume=true",
                          "arch.hidden_size=64")]) == 2
    assert "arch.hidden_size was 32, now 64" in capsys.readouterr().err


def test_feedforward_baseline_trains(sudoku_path, tmp_path):
    run = tmp_path / "run"
    assert pretrain.main(["--config-name", "train/ff_sudoku", *overrides(sudoku_path, run, "arch.L_layers=3",
                          "arch.halt_max_steps=1", "max_steps=2", "eval_interval_steps=2")]) == 0
    assert torch.load(run / "step_2.pt", weights_only=True)["config"]["arch"]["feedforward"] is True


def test_maze_feedforward_baseline_trains(maze_dir, tmp_path):
    run = tmp_path / "run"
    assert pretrain.main(["--config-name", "train/ff_maze_unique", f"data_path={maze_dir}", f"checkpoint_path={run}",
                          "device=cpu", "wandb_mode=disabled", "global_batch_size=4", "eval_batch_size=4",
                          "eval_max_examples=4", "arch.hidden_size=32", "arch.num_heads=2", "arch.L_layers=2",
                          "arch.forward_dtype=float32", "max_steps=1", "eval_interval_steps=1"]) == 0
    saved = torch.load(run / "step_1.pt", weights_only=True)
    arch = saved["config"]["arch"]
    assert arch["feedforward"] is True and arch["mlp_t"] is False and arch["pos_encodings"] == "rope"
    assert all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())
    assert any(m.get("step") == 1 and TRAIN["lm_loss"] in m for m in read_metrics(run))


@pytest.mark.parametrize("name, seq_len, vocab_size", [("train/ff_sudoku", 81, 11), ("train/ff_maze_unique", 900, 6)])
def test_feedforward_parameter_counts_in_the_docs(name, seq_len, vocab_size):  # EqR's: test_model.py
    """The parameter count docs/training.md's preset table gives is the model's."""
    with open(os.path.join(ROOT, "docs", "training.md")) as f:
        row = next(line for line in f if line.startswith(f"| `{name}` |"))
    documented = int(re.search(r"\(([\d,]+) params\)", row).group(1).replace(",", ""))
    arch = {k: v for k, v in pretrain.compose_train_config(name, [])["arch"].items() if k not in ("seq_len", "vocab_size")}

    def count(layers):  # on the meta device: no memory, but its init still costs ~0.1 s a tensor
        with torch.device("meta"):
            config = ModelConfig.from_dict(arch, seq_len=seq_len, vocab_size=vocab_size, L_layers=layers)
            return sum(p.numel() for p in RecurrentReasoner(config).parameters())

    # The blocks of a stack are alike, so N blocks cost one block N - 1 times more than one block.
    one, two = count(1), count(2)
    assert one + (arch["L_layers"] - 1) * (two - one) == documented


@pytest.mark.parametrize("name, expect", [
    ("train/eqr_sudoku", dict(mlp_t=True, lambda_=0.95, noise_scale=0.01, random_init=True, L_layers=2, H_cycles=3, L_cycles=6, hidden_size=512)),
    ("train/trm_sudoku", dict(mlp_t=True, lambda_=1.0, noise_scale=0.0, random_init=False, pos_encodings="none")),
    ("train/ff_sudoku", dict(feedforward=True, L_layers=42, H_cycles=1, halt_max_steps=1, H_init_std=0.0, random_init=False)),
    ("train/eqr_maze_unique", dict(mlp_t=False, L_layers=1, L_cycles=4, hidden_size=128, pos_encodings="rope", lambda_=0.95)),
    ("train/trm_maze_unique", dict(mlp_t=False, L_layers=1, L_cycles=4, hidden_size=128, random_init=False, noise_scale=0.0)),
    ("train/ff_maze_unique", dict(feedforward=True, L_layers=15, hidden_size=128, num_heads=8, mlp_t=False,
                                  pos_encodings="rope", random_init=False, H_init_std=0.0)),
])
def test_paper_presets(name, expect):
    cfg = pretrain.compose_train_config(name, [])
    tc = pretrain.parse_train_config(cfg)
    assert (tc.global_batch_size, tc.lr, tc.lr_warmup_steps, tc.lr_min_ratio, tc.weight_decay) == (768, 1e-4, 2000, 1.0, 1.0)
    assert (tc.beta1, tc.beta2, tc.ema, tc.ema_rate) == (0.9, 0.95, True, 0.999)
    # floor(1000 groups * 1 example / 768) = 1 step per epoch on the 1k sets
    assert tc.epochs * (1000 * 1 // tc.global_batch_size) == (100000 if "maze" in name else 50000)
    config = ModelConfig.from_dict({k: v for k, v in cfg["arch"].items() if k not in ("seq_len", "vocab_size")},
                                   seq_len=81 if "sudoku" in name else 900, vocab_size=11 if "sudoku" in name else 6)
    assert {k: getattr(config, k) for k in expect} == expect
    assert config.halt_max_steps == (1 if "ff" in name else 16) and config.forward_dtype == "bfloat16"


def test_reference_key_dataset_data_path_is_an_alias():
    cfg = pretrain.compose_train_config("train/eqr_maze_unique", ["dataset.data_path=/somewhere"])
    assert cfg["data_path"] == "/somewhere"
    cfg = pretrain.compose_train_config("train/eqr_maze_unique", ["data_path=/elsewhere"])
    assert cfg["dataset"]["data_path"] == "/elsewhere"


@pytest.mark.parametrize("name", ["eqr_sudoku_cpu", "trm_sudoku_cpu", "ff_sudoku_cpu", "eqr_maze_cpu", "trm_maze_cpu",
                                  "ff_maze_cpu", "eqr_sudoku_quickstart"])
def test_cpu_presets_compose(name):
    tc = pretrain.parse_train_config(pretrain.compose_train_config(f"train/{name}", []))
    assert tc.device == "cpu" and tc.global_batch_size <= 64 and tc.arch["hidden_size"] <= 128


def test_forward_dtype_auto_is_resolved_and_saved(sudoku_path, tmp_path):
    from utils.processes import native_forward_dtype
    run = tmp_path / "run"
    args = [a for a in overrides(sudoku_path, run, "max_steps=1") if not a.startswith("arch.forward_dtype=")]
    assert pretrain.main(["--config-name", "train/eqr_sudoku", *args, "arch.forward_dtype=auto"]) == 0
    saved = torch.load(run / "step_1.pt", weights_only=True)["config"]["arch"]["forward_dtype"]
    assert saved == native_forward_dtype(torch.device("cpu")) and saved in ("bfloat16", "float32")


def test_a_bfloat16_preset_on_a_cpu_without_bf16_units_trains_in_float32(sudoku_path, tmp_path, capsys, monkeypatch):
    """The paper preset's bfloat16 on an AVX2-only CPU (simulated: its /proc/cpuinfo flags) runs in float32, says so
    once and names the dtype, device and threads in the header; typed on the command line, bfloat16 stays."""
    import utils.processes
    monkeypatch.setattr(utils.processes, "cpu_flags", lambda: {"avx2", "fma"})
    args = [a for a in overrides(sudoku_path, tmp_path / "auto", "max_steps=1", "threads=1")
            if not a.startswith("arch.forward_dtype=")]
    assert pretrain.main(["--config-name", "train/eqr_sudoku", *args]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("notice:")] == [
        "notice: arch.forward_dtype: bfloat16 runs in float32 here (this CPU has no bfloat16 units, so bfloat16 would "
        "be emulated, about 10x slower; answers may differ slightly); type arch.forward_dtype=bfloat16 to keep it"]
    assert "parameters in float32," in err and "1 process(es) on cpu with 1 thread(s)" in err
    assert torch.load(tmp_path / "auto" / "step_1.pt", weights_only=True)["config"]["arch"]["forward_dtype"] == "float32"

    args = [a.replace("/auto", "/typed") for a in args]
    assert pretrain.main(["--config-name", "train/eqr_sudoku", *args, "arch.forward_dtype=bfloat16"]) == 0
    err = capsys.readouterr().err
    assert "notice:" not in err and "parameters in bfloat16," in err


@pytest.mark.slow
def test_the_final_checkpoint_is_written_before_the_final_evaluation(tmp_path):
    """A run killed during its last evaluation (killed as soon as its progress bar shows) has its last step on disk;
    resumed, it runs only that evaluation."""
    data = str(tmp_path / "data")
    build_sudoku_dataset.main(["--generate", "16", "--generate-test", "300", "--num-aug", "1", "--min-givens", "50",
                               "--output-dir", data])
    run = tmp_path / "run"
    args = ["--config-name", "train/eqr_sudoku", *overrides(data, run, "max_steps=4", "eval_interval_steps=100",
                                                           "eval_max_examples=null", "arch.halt_max_steps=16")]
    proc = run_cli(args)
    seen = ""
    while "eval D16" not in seen:  # the evaluation's progress bar, on stderr
        chunk = os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
        assert chunk, f"the run ended before its final evaluation: {seen[-2000:]}"
        seen += chunk
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert (run / "latest").read_text().strip() == "step_4.pt"
    assert not [m for m in read_metrics(run) if EVAL["exact_accuracy"] in m]

    resumed = run_cli([*args, "resume=true"])
    assert resumed.wait() == 0
    err = resumed.stderr.read()
    assert "resuming at step 4" in err
    assert [m["step"] for m in read_metrics(run) if EVAL["exact_accuracy"] in m] == [4]
