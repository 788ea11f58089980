"""The authors' spellings (config/reference_keys.py) work in both entry points; unknown keys are still refused.

The key lists below are written out from the authors' config files (config/cfg_pretrain.yaml,
config/train/*.yaml, config/arch/*.yaml, config/dataset/*.yaml, config/eval/depth_breadth.yaml,
config/schema.py and evaluators/eval_config.py of github locuslab/EqR), not read from our table.
"""
import dataclasses
import json
import os
import subprocess

import pytest

import evaluate
import launch
import pretrain
from config import compose_eval_config, compose_train_config
from tests.data_fixtures import sudoku_dir  # noqa: F401 (fixture)
from utils.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPTH_BREADTH = "config/eval/depth_breadth.yaml"

# Every top-level key of their training configs and schema, with a value they would pass.
THEIR_TRAIN_KEYS = {
    "global_batch_size": "768", "epochs": "50000", "train_epochs_per_iter": "5000", "eval_interval_steps": "5000",
    "checkpoint_interval_steps": "5000", "heavy_metrics_log_interval": "2500", "steps_hist_log_interval_steps": "1000",
    "lr": "1e-4", "lr_min_ratio": "1.0", "lr_warmup_steps": "2000", "target_q_update_every": "4", "beta1": "0.9",
    "beta2": "0.95", "weight_decay": "1.0", "load_weights_only": "false", "ema": "true", "ema_rate": "0.999",
    "gradient_checkpoint": "false", "grad_norm_log_interval_steps": "null", "optimizer_kwargs": "{}",
    "gradient_accumulation_steps": "1", "grad_clip_norm": "null", "project_name": "p", "entity": "null",
    "run_name": "r", "checkpoint_path": "null", "resume": "false", "load_checkpoint": "null", "load_strict": "false",
    "seed": "3", "eval_save_outputs": "[]", "steps_hist_plotly": "true", "max_steps": "7", "wandb_mode": "disabled",
    "debug": "false", "debug_trace_steps": "0", "hidden_state_log_interval_steps": "null", "retain_graph": "false",
    "eval_sync_max_wait_time": "300.0", "eval_sync_poll_interval": "2.0", "eval_sync_status_log_interval": "10.0",
    "eval_description": "null", "eval_dir": "null", "convergence_window": "10", "convergence_top_k": "null",
    "convergence_vis_plots": "[]", "arch.H_layers": "0", "arch.no_ACT_continue": "true", "dataset.evaluators": "[]",
}
OURS = {"global_batch_size", "epochs", "eval_interval_steps", "checkpoint_interval_steps", "lr", "lr_min_ratio",
        "lr_warmup_steps", "beta1", "beta2", "weight_decay", "ema", "ema_rate", "project_name", "run_name",
        "checkpoint_path", "resume", "seed", "max_steps", "wandb_mode", "arch.no_ACT_continue"}
# Every key of their depth_breadth.yaml and EvalConfig, with a value they would pass.
THEIR_EVAL_KEYS = {
    "halt_max_steps": "16", "checkpoint": "c.pt", "param_iter": "{arch.halt_max_steps:16}", "suffix": "D16_B1",
    "global_batch_size": "64", "max_eval_steps": "null", "force_rerun": "true", "different_init": "1",
    "different_init_reset_std": "1.0", "convergence_top_k": "null", "convergence_window": "3",
    "report_conv_acc_stats": "false", "enable_different_init_core_metrics": "true", "wandb_run_name": "Eval",
    "checkpoint_list": "[]", "dataset_data_path": "data/x", "load_strict": "null", "top_k": "null",
    "shared_param_iter": "{}", "description": "null", "name": "Eval", "wandb_tags": "null",
    "loss_head_name": "losses@InferenceLossHead", "convergence_vis_plots": "[]", "save_outputs": "false",
}


@pytest.mark.parametrize("plus", ["", "+"])
def test_every_key_of_their_training_configs_is_taken(plus, capsys):
    cfg = compose_train_config("train/eqr_sudoku_cpu", [f"{plus}{k}={v}" for k, v in THEIR_TRAIN_KEYS.items()])
    config = pretrain.parse_train_config(cfg)
    assert (config.max_steps, config.run_name, config.wandb_mode, config.seed) == (7, "r", "disabled", 3)
    notices = capsys.readouterr().err.splitlines()
    assert len(notices) == len(THEIR_TRAIN_KEYS) - len(OURS)  # one line per key of theirs that we lack
    assert all(line.startswith("notice: ") and "(the authors' key)" in line for line in notices)
    assert any(line.startswith("notice: train_epochs_per_iter=5000 ") and "eval_interval_steps" in line
               for line in notices)


@pytest.mark.parametrize("plus", ["", "+"])
def test_every_key_of_their_eval_configs_is_taken(plus, capsys):
    cfg = evaluate.parse_config(compose_eval_config([f"{plus}{k}={v}" for k, v in THEIR_EVAL_KEYS.items()]))
    assert (cfg.checkpoint, cfg.data_path, cfg.halt_max_steps, cfg.different_init) == ("c.pt", "data/x", 16, 1)
    assert cfg.convergence_top_k == 1 and cfg.global_batch_size == 64
    assert cfg.different_init_reset_std == 1.0 and cfg.save_outputs is False
    assert all(line.startswith("notice: ") for line in capsys.readouterr().err.splitlines())


def test_their_evaluator_takes_their_training_keys_and_notices_are_for_typed_keys_only(capsys):
    """Their evaluate.py takes any key (extra="allow"), so every key of their training schema works here too, each
    with its one notice; the keys of an eval_yaml the user did not write say nothing."""
    cfg = evaluate.parse_config(compose_eval_config(["checkpoint=c.pt", *(f"{k}={v}" for k, v in THEIR_TRAIN_KEYS.items())]))
    assert (cfg.seed, cfg.global_batch_size, cfg.resume) == (3, 768, False)
    notices = capsys.readouterr().err.splitlines()
    assert all(line.startswith("notice: ") for line in notices) and len(notices) >= len(THEIR_TRAIN_KEYS) - 8
    assert 'notice: wandb_mode="disabled" (the authors\' key) does nothing here (evaluation does not log to W&B)' in notices

    evaluate.parse_config(compose_eval_config([f"eval_yaml={DEPTH_BREADTH}", "checkpoint=c.pt"]))
    assert capsys.readouterr().err == ""  # its suffix, force_rerun, wandb_run_name ... were not typed
    evaluate.parse_config(compose_eval_config([f"eval_yaml={DEPTH_BREADTH}", "checkpoint=c.pt", "suffix=x"]))
    assert capsys.readouterr().err.startswith('notice: suffix="x" (the authors\' key) does nothing here')


@pytest.mark.parametrize("entry, overrides, message", [
    ("train", ["+no_such_key=1"], "no_such_key: unknown config key"),
    ("train", ["no_such_key=1"], "no_such_key: unknown config key"),
    ("train", ["+dataset.no_such_key=1"], "dataset.no_such_key: unknown config key"),
    ("train", ["load_checkpoint=run/step_10.pt"], 'load_checkpoint="run/step_10.pt" (the authors\' key) works '
                                                  'here only as null'),
    ("train", ["optimizer_kwargs={eps:1e-8}"], "optimizer_kwargs="),
    ("eval", ["checkpoint=c.pt", "+no_such_key=1"], "no_such_key: unknown config key"),
    ("eval", ["checkpoint=c.pt", "no_such_key=1"], "no_such_key: unknown config key"),
    ("eval", ["checkpoint=c.pt", "checkpoint_list=[{checkpoint:d.pt}]"], "works here only as []"),
    ("eval", ["checkpoint=c.pt", "+param_iter={arch.lambda_:0.5}"], "param_iter.arch.lambda_: only arch.halt_max_steps"),
    ("eval", ["checkpoint=c.pt", "eval_yaml=no/such.yaml"], "eval_yaml: no/such.yaml: no such file"),
])
def test_unknown_keys_and_unsupported_values_are_one_line_errors(entry, overrides, message):
    with pytest.raises(ConfigError) as error:
        if entry == "train":
            pretrain.parse_train_config(compose_train_config("train/eqr_sudoku_cpu", overrides))
        else:
            evaluate.parse_config(compose_eval_config(overrides))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert "'+" not in str(error.value)  # never Hydra's hint to add a `+`


def test_eval_yaml_is_their_file_and_the_command_line_wins(tmp_path, capsys):
    theirs = evaluate.parse_config(compose_eval_config([f"eval_yaml={DEPTH_BREADTH}", "checkpoint=c.pt"]))
    assert (theirs.halt_max_steps, theirs.different_init, theirs.depths, theirs.breadths) == (16, 1, None, None)
    assert theirs.global_batch_size is None and theirs.convergence_window == 3
    cli = evaluate.parse_config(compose_eval_config([f"eval_config={DEPTH_BREADTH}", "checkpoint=c.pt",
                                                     "halt_max_steps=64", "+different_init=128"]))
    assert (cli.halt_max_steps, cli.different_init) == (64, 128)  # their param_iter follows ${halt_max_steps}
    preset = evaluate.parse_config(compose_eval_config(["eval=depth_breadth", "checkpoint=c.pt", "halt_max_steps=64"]))
    assert preset == dataclasses.replace(cli, different_init=1)  # the same file as a preset, eval=depth_breadth

    mine = tmp_path / "mine.yaml"
    mine.write_text("halt_max_steps: 8\nparam_iter:\n  arch.halt_max_steps: [2, 8]\ndataset_data_path: data/y\n")
    cfg = evaluate.parse_config(compose_eval_config([f"eval_yaml={mine}", "checkpoint=c.pt"]))
    assert (cfg.depths, cfg.halt_max_steps, cfg.data_path) == ([2, 8], None, "data/y")
    capsys.readouterr()

    mine.write_text("halt_max_steps: 8\nhalt_max_step: 4\n")
    assert evaluate.main([f"eval_yaml={mine}", "checkpoint=c.pt"]) == 2
    assert capsys.readouterr().err == f"error: {mine}: halt_max_step: unknown evaluation key (the known ones are in " \
                                      f"config/cfg_eval.yaml and docs/reference_notes.md)\n"
    for text, message in [("- 1\n- 2\n", "expected a mapping"), ("a: [\n", "not a readable yaml file")]:
        mine.write_text(text)
        with pytest.raises(ConfigError, match=f"^eval_yaml: {mine}: {message}"):
            compose_eval_config([f"eval_yaml={mine}", "checkpoint=c.pt"])


@pytest.fixture(scope="module")
def their_run(sudoku_dir, tmp_path_factory):  # noqa: F811 (fixture)
    """A tiny float32 model trained 2 steps with the authors' training spellings; its folder."""
    run = tmp_path_factory.mktemp("runs") / "theirs"
    code = pretrain.main(["--config-name", "train/eqr_sudoku", f"data_path={sudoku_dir}", "+max_steps=2",
                          "+run_name=theirs", "+wandb_mode=disabled", f"+checkpoint_path={run}", "device=cpu",
                          "train_epochs_per_iter=5000", "+heavy_metrics_log_interval=2500", "target_q_update_every=4",
                          "global_batch_size=8", "eval_interval_steps=null", "arch.hidden_size=32",
                          "arch.num_heads=2", "arch.L_layers=1", "arch.H_cycles=1", "arch.L_cycles=1",
                          "arch.halt_max_steps=2", "arch.forward_dtype=float32"])
    assert code == 0
    return run


def test_their_training_spellings_run(their_run):
    assert (their_run / "latest").read_text().strip() == "step_2.pt"
    saved = (their_run / "config.yaml").read_text()
    assert "run_name: theirs" in saved and "max_steps: 2" in saved and "train_epochs_per_iter" not in saved


def test_their_documented_evaluate_command(their_run, sudoku_dir, tmp_path, capsys):  # noqa: F811 (fixture)
    """python evaluate.py eval_yaml=config/eval/depth_breadth.yaml checkpoint=C dataset_data_path=D
    halt_max_steps=16 different_init=1 global_batch_size=64 (output_dir and no plots added for the test)."""
    out = tmp_path / "out"
    code = evaluate.main([f"eval_yaml={DEPTH_BREADTH}", f"checkpoint={their_run / 'step_2.pt'}",
                          f"dataset_data_path={sudoku_dir}", "halt_max_steps=16", "different_init=1",
                          "global_batch_size=64", f"output_dir={out}", "plots=false", "progress=false"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert {(r["depth"], r["breadth"]) for r in results["rows"]} == {(16, 1)}
    assert results["rows"][0]["total"] == 13


def eval_sh(*args):
    env = {**launch.interpreter_env(), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", "eval.sh"), *args], cwd="/", env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("overrides", [[], ["halt_max_steps=16"]])
def test_eval_sh_runs_one_cell_d16_b1_unless_overridden(overrides, their_run, sudoku_dir, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    done = eval_sh(str(their_run / "step_2.pt"), f"data_path={sudoku_dir}", f"output_dir={out}", "plots=false",
                   "progress=false", "global_batch_size=16", *overrides)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {(r["depth"], r["breadth"]) for r in rows} == {(16, 1)}  # the checkpoint was trained at D2
    assert all(line.startswith("notice: ") for line in done.stderr.splitlines() if "(the authors' key)" in line)


def test_eval_sh_without_a_checkpoint_prints_usage():
    done = eval_sh()
    assert done.returncode == 2 and "scripts/eval.sh CHECKPOINT" in done.stdout


@pytest.mark.slow
def test_eval_sweep_sh_runs_the_paper_grid_preset(their_run, sudoku_dir, tmp_path):  # noqa: F811 (fixture)
    out = tmp_path / "out"
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "eval_sweep.sh"), str(their_run / "step_2.pt"),
                           f"data_path={sudoku_dir}", f"output_dir={out}", "depths=[1,2]", "breadths=[1,2]",
                           "device=cpu", "plots=false", "progress=false"], env={**launch.interpreter_env(), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert {(r["depth"], r["breadth"]) for r in results["rows"]} == {(1, 1), (1, 2), (2, 1), (2, 2)}
    assert results["identity"]["global_batch_size"] == 16  # from eval=paper_grid
