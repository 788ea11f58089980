"""The official TRM and HRM as configurations of our model: their checkpoint layout, presets, training, the grid.

Their state-dict layout is written out here from the structure of their code (module names, shapes),
not from our model, so the reader is tested against their layout without their code.
scripts/compare_official.py checks the computation itself against their code.
"""
import json
import os

import pytest
import torch
import yaml

import evaluate
import pretrain
from models.checkpoint import load_for_eval
from models.eqr import ModelConfig, RecurrentReasoner
from models.losses import ACTLossHead
from tests.data_fixtures import maze_dir, sudoku_dir  # noqa: F401 (fixtures)
from tests.test_hub import add_to_hub_cache
from utils.errors import CheckpointError
from utils.run_folder import TRAIN

TRM_CLASS = "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"
HRM_CLASS = "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1"


def swiglu_width(width: int, expansion: float = 4) -> int:
    """Their SwiGLU's inner width: round(expansion * width * 2/3) up to a multiple of 256."""
    return -(round(expansion * width * 2 / 3) // -256) * 256


def block_shapes(prefix: str, hidden: int, mlp_t_width: int | None) -> dict:
    inner = swiglu_width(hidden)
    shapes = {f"{prefix}.mlp.gate_up_proj.weight": (2 * inner, hidden), f"{prefix}.mlp.down_proj.weight": (hidden, inner)}
    if mlp_t_width:
        t = swiglu_width(mlp_t_width)
        shapes.update({f"{prefix}.mlp_t.gate_up_proj.weight": (2 * t, mlp_t_width),
                       f"{prefix}.mlp_t.down_proj.weight": (mlp_t_width, t)})
    else:
        shapes.update({f"{prefix}.self_attn.qkv_proj.weight": (3 * hidden, hidden),
                       f"{prefix}.self_attn.o_proj.weight": (hidden, hidden)})
    return shapes


def official_shapes(seq_len, vocab, hidden, L_layers, puzzle_ids, emb_len, H_layers=0, mlp_t=False) -> dict:
    """Names and shapes of the state dict of their ACT loss head (as in their model files), compile prefix aside."""
    shapes = {"model.inner.embed_tokens.embedding_weight": (vocab, hidden), "model.inner.lm_head.weight": (vocab, hidden),
              "model.inner.q_head.weight": (2, hidden), "model.inner.q_head.bias": (2,),
              "model.inner.puzzle_emb.weights": (puzzle_ids, hidden),
              "model.inner.H_init": (hidden,), "model.inner.L_init": (hidden,)}
    for i in range(L_layers):
        shapes.update(block_shapes(f"model.inner.L_level.layers.{i}", hidden, seq_len + emb_len if mlp_t else None))
    for i in range(H_layers):
        shapes.update(block_shapes(f"model.inner.H_level.layers.{i}", hidden, None))
    return shapes


TRM_ARCH = dict(name=TRM_CLASS, loss={"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"},
                H_cycles=2, L_cycles=2, H_layers=0, L_layers=2, hidden_size=32, num_heads=4, expansion=4,
                pos_encodings="none", mlp_t=True, puzzle_emb_ndim=32, halt_max_steps=4, halt_exploration_prob=0.1,
                forward_dtype="float32")  # their default puzzle_emb_len (16) and no_ACT_continue (true) left out
HRM_ARCH = dict(name=HRM_CLASS, loss={"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"},
                H_cycles=2, L_cycles=2, H_layers=2, L_layers=1, hidden_size=32, num_heads=4, expansion=4,
                pos_encodings="rope", puzzle_emb_ndim="${.hidden_size}", halt_max_steps=4, halt_exploration_prob=0.1,
                forward_dtype="bfloat16")
TRM_SHAPES = official_shapes(16, 11, 32, 2, puzzle_ids=1, emb_len=16, mlp_t=True)
HRM_SHAPES = official_shapes(36, 6, 32, 1, puzzle_ids=3, emb_len=1, H_layers=2)


def write_official(folder, shapes: dict, arch: dict, name="step_100", seed=0) -> tuple[str, dict]:
    """Their layout: a compiled loss head's state dict (random values) and all_config.yaml beside it."""
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    for k in ("model.inner.H_init", "model.inner.L_init"):  # buffers made in the forward dtype
        state[k] = state[k].to(getattr(torch, arch["forward_dtype"]))
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    torch.save({f"_orig_mod.{k}": v for k, v in state.items()}, path)
    with open(os.path.join(folder, "all_config.yaml"), "w") as f:
        yaml.safe_dump({"arch": arch, "global_batch_size": 768, "ema": True, "lr": 1e-4}, f)
    return path, state


def test_official_trm_file_loads_with_its_defaults_and_seq_len_off_the_weights(tmp_path):
    path, state = write_official(str(tmp_path / "trm"), TRM_SHAPES, TRM_ARCH)
    head, info = load_for_eval(path)
    config = head.model.config
    assert info["format"] == "official" and info["read_with"] == "weights_only" and info["step"] == 100
    assert (config.seq_len, config.vocab_size, config.prefix_len, config.latent_len) == (16, 11, 16, 32)
    assert (config.lambda_, config.noise_scale, config.random_init, config.no_ACT_continue) == (1.0, 0.0, False, True)
    assert config.H_level_layers == 0 and info["train_config"]["lr"] == 1e-4
    loaded = head.state_dict()
    assert sorted(loaded) == sorted(state) and all(torch.equal(loaded[k], v) for k, v in state.items())
    batch = {"inputs": torch.randint(1, 11, (3, 16), dtype=torch.int32), "labels": torch.randint(1, 11, (3, 16)),
             "puzzle_identifiers": torch.zeros(3, dtype=torch.int32)}
    carry, _, _, out = head(head.initial_carry(batch), batch)
    assert out["logits"].shape == (3, 16, 11) and carry.z_H.shape == (3, 32, 32)


def test_hrm_file_loads_from_hf_offline_with_its_config_beside(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    path, state = write_official(str(tmp_path / "hrm"), HRM_SHAPES, HRM_ARCH, name="checkpoint")
    with open(path, "rb") as f, open(os.path.join(os.path.dirname(path), "all_config.yaml"), "rb") as g:
        add_to_hub_cache(tmp_path / "hub", "someone/HRM-checkpoint-maze",
                         {"maze/checkpoint": f.read(), "maze/all_config.yaml": g.read()})
    with pytest.raises(CheckpointError, match="does not record seq_len; pass the dataset"):
        load_for_eval("hf://someone/HRM-checkpoint-maze/maze/checkpoint")
    head, info = load_for_eval("hf://someone/HRM-checkpoint-maze/maze/checkpoint", data_seq_len=36)
    config = head.model.config
    assert (config.H_level_layers, config.L_layers, config.one_step_grad, config.no_ACT_continue) == (2, 1, True, False)
    assert (config.puzzle_emb_ndim, config.prefix_len, config.num_puzzle_identifiers) == (32, 1, 3)
    assert config.forward_dtype == "bfloat16" and config.blocks_per_step == 2 * (2 * 1 + 2)
    assert all(torch.equal(head.state_dict()[k], v) for k, v in state.items()) and info["step"] is None


def error_line(path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as e:
        load_for_eval(str(path), **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_official_files_that_do_not_fit_fail_with_one_line(tmp_path):
    path, _ = write_official(str(tmp_path / "a"), TRM_SHAPES, TRM_ARCH)
    os.remove(os.path.join(tmp_path, "a", "all_config.yaml"))
    assert "needs its all_config.yaml beside it" in error_line(path)

    path, _ = write_official(str(tmp_path / "y"), TRM_SHAPES, TRM_ARCH)
    with open(os.path.join(tmp_path, "y", "all_config.yaml"), "w") as f:
        f.write("arch: [unclosed\n")
    assert "all_config.yaml: not readable YAML" in error_line(path)

    path, _ = write_official(str(tmp_path / "b"), TRM_SHAPES, {**TRM_ARCH, "name": "recursive_reasoning.trm_singlez@X"})
    assert "is not a model this code builds" in error_line(path)

    path, _ = write_official(str(tmp_path / "c"), TRM_SHAPES, {**TRM_ARCH, "puzzle_emb_len": 4})
    assert "mlp_t.gate_up_proj.weight has shape (512, 32), architecture expects (512, 20)" in error_line(path, data_seq_len=16)

    shapes = {k: v for k, v in HRM_SHAPES.items() if "H_level.layers.1" not in k}
    path, _ = write_official(str(tmp_path / "d"), shapes, HRM_ARCH)
    assert "missing parameter model.inner.H_level.layers.1" in error_line(path, data_seq_len=36)


def test_an_official_file_with_code_in_its_pickle_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))
    folder = tmp_path / "evil"
    path, _ = write_official(str(folder), TRM_SHAPES, TRM_ARCH)
    state = torch.load(path, weights_only=True)
    state["_orig_mod.model.inner.extra"] = Payload()
    torch.save(state, path)
    assert "refused to unpickle posix.system" in error_line(path)


@pytest.mark.parametrize("name, parameters, shapes", [
    # HRM's Sudoku model: their README's "27 million parameters"; the official TRM's mlp_t Sudoku model.
    ("train/hrm_sudoku", 27_275_778, official_shapes(81, 11, 512, 4, puzzle_ids=1, emb_len=1, H_layers=4)),
    ("train/trm_official_sudoku", 5_029_378, official_shapes(81, 11, 512, 2, puzzle_ids=1, emb_len=16, mlp_t=True)),
    ("train/hrm_maze_unique", None, official_shapes(900, 6, 512, 4, puzzle_ids=1, emb_len=1, H_layers=4)),
    ("train/trm_official_maze_unique", None, official_shapes(900, 6, 512, 2, puzzle_ids=1, emb_len=16)),
])
def test_presets_build_their_layout(name, parameters, shapes):
    cfg = pretrain.compose_train_config(name, [])
    sizes = dict(seq_len=81, vocab_size=11) if "sudoku" in name else dict(seq_len=900, vocab_size=6)
    config = ModelConfig.from_dict({k: v for k, v in cfg["arch"].items() if k not in ("seq_len", "vocab_size")}, **sizes)
    with torch.device("meta"):
        head = ACTLossHead(RecurrentReasoner(config))
    assert {k: tuple(t.shape) for k, t in head.state_dict().items()} == shapes
    if parameters is not None:
        assert sum(p.numel() for p in head.parameters()) == parameters
    assert pretrain.parse_train_config(cfg).ema is ("trm_official" in name)
    assert config.pos_encodings == ("none" if name == "train/trm_official_sudoku" else "rope")


def test_one_step_gradient_changes_gradients_only_and_the_continue_head_adds_its_loss():
    config = ModelConfig(seq_len=9, vocab_size=5, hidden_size=16, num_heads=2, L_layers=1, H_level_layers=1,
                         H_cycles=2, L_cycles=2, halt_max_steps=3, forward_dtype="float32", puzzle_emb_ndim=16,
                         lambda_=1.0, noise_scale=0.0, random_init=False, one_step_grad=True, no_ACT_continue=False)
    torch.manual_seed(0)
    heads = [ACTLossHead(RecurrentReasoner(config)) for _ in range(2)]
    heads[1].load_state_dict(heads[0].state_dict())
    heads[1].model.inner.config = ModelConfig(**{**config.to_dict(), "one_step_grad": False})
    batch = {"inputs": torch.randint(1, 5, (4, 9)), "labels": torch.randint(1, 5, (4, 9)),
             "puzzle_identifiers": torch.zeros(4, dtype=torch.int32)}
    runs = []
    for head in heads:
        torch.manual_seed(1)
        carry, loss, metrics, out = head(head.initial_carry(batch), batch)
        loss.backward()
        runs.append((loss, out, {n: p.grad for n, p in head.named_parameters()}))
    (loss, out, grads), (full_loss, full_out, full_grads) = runs
    assert torch.equal(loss, full_loss) and torch.equal(out["logits"], full_out["logits"])
    assert not torch.equal(grads["model.inner.L_level.layers.0.mlp.down_proj.weight"],
                           full_grads["model.inner.L_level.layers.0.mlp.down_proj.weight"])
    assert torch.equal(grads["model.inner.lm_head.weight"], full_grads["model.inner.lm_head.weight"])
    assert set(out) == {"logits", "q_halt_logits", "q_continue_logits", "target_q_continue"}
    assert torch.allclose(loss, metrics["lm_loss"] + 0.5 * (metrics["q_halt_loss"] + metrics["q_continue_loss"]))
    assert metrics["q_continue_loss"] > 0 and grads["model.inner.puzzle_emb.weights"].abs().sum() > 0


@pytest.mark.parametrize("name", ["hrm_sudoku_cpu", "trm_official_sudoku_cpu"])
def test_cpu_preset_trains_and_evaluates_in_the_grid_from_fresh_starts(name, sudoku_dir, tmp_path):
    run = tmp_path / "run"
    assert pretrain.main(["--config-name", f"train/{name}", f"data_path={sudoku_dir}", f"checkpoint_path={run}",
                          "wandb_mode=disabled", "threads=1", "max_steps=3", "global_batch_size=8",
                          "eval_batch_size=8", "eval_max_examples=8", "eval_interval_steps=3", "log_interval_steps=1",
                          "arch.forward_dtype=float32", "arch.hidden_size=32", "arch.num_heads=2",
                          "arch.halt_max_steps=3"]) == 0
    saved = torch.load(run / "step_3.pt", weights_only=True)
    assert "model.inner.puzzle_emb.weights" in saved["model"]
    assert ("model.inner.H_level.layers.1.mlp.down_proj.weight" in saved["model"]) is (name == "hrm_sudoku_cpu")
    out = tmp_path / "eval"
    assert evaluate.main([f"checkpoint={run / 'step_3.pt'}", f"output_dir={out}", "depths=[1,3]", "breadths=[1,3]",
                          "global_batch_size=4", "threads=1", "progress=false", "plots=false"]) == 0
    with open(out / "results.json") as f:
        results = json.load(f)
    assert results["grid"]["fresh_init_std"] == 1.0 and results["data"]["puzzles"] == 13
    rows = {(r["depth"], r["breadth"], r["rule"]): r for r in results["rows"]}
    # B = 3 from fresh draws: its trajectories are not three copies of the fixed-latent one
    assert rows[(3, 3, "all_traj")]["token_correct"] != 3 * rows[(3, 1, "traj1")]["token_correct"]


def test_the_puzzle_embedding_takes_their_sign_sgd_and_stays_out_of_the_ema():
    from models.ema import EMA
    from models.optim import make_optimizer

    config = ModelConfig(seq_len=9, vocab_size=5, hidden_size=16, num_heads=2, L_layers=1, H_cycles=1, L_cycles=1,
                         forward_dtype="float32", puzzle_emb_ndim=16, num_puzzle_identifiers=3,
                         lambda_=1.0, noise_scale=0.0, random_init=False)
    torch.manual_seed(0)
    head = ACTLossHead(RecurrentReasoner(config))
    optimizer = make_optimizer(head.parameters(), lr=0.5, betas=(0.9, 0.95), weight_decay=0.2)
    ema = EMA(head, 0.9)
    emb = head.model.inner.puzzle_emb.weights
    assert "model.inner.puzzle_emb.weights" not in ema.shadow and len(ema.shadow) == len(list(head.parameters())) - 1
    with torch.no_grad():
        emb.fill_(1.0)
    batch = {"inputs": torch.randint(1, 5, (4, 9)), "labels": torch.randint(1, 5, (4, 9)),
             "puzzle_identifiers": torch.tensor([0, 2, 2, 0], dtype=torch.int32)}
    _, loss, _, _ = head(head.initial_carry(batch), batch)
    loss.backward()
    grad = emb.grad.clone()
    optimizer.step()
    assert torch.equal(emb[1], torch.ones(16))  # no row of the batch used identifier 1: neither decayed nor moved
    assert torch.equal(emb[[0, 2]], (1 - 0.5 * 0.2) - 0.5 * torch.sign(grad[[0, 2]]))


def test_hrm_resumes_bit_exactly(sudoku_dir, tmp_path):
    """The optimizer's sign-SGD group and the continue head's carry come back from a checkpoint."""
    def train(run, steps, *extra):
        assert pretrain.main(["--config-name", "train/hrm_sudoku_cpu", f"data_path={sudoku_dir}", f"checkpoint_path={run}",
                              "run_name=r", "wandb_mode=disabled", "threads=1", f"max_steps={steps}", "global_batch_size=8",
                              "eval_interval_steps=null", "log_interval_steps=1", "checkpoint_interval_steps=2",
                              "lr_warmup_steps=1", "lr_min_ratio=1.0", "arch.forward_dtype=float32",
                              "arch.hidden_size=32", "arch.num_heads=2", *extra]) == 0
        with open(os.path.join(run, "metrics.jsonl")) as f:
            return [json.loads(line) for line in f if TRAIN["lm_loss"] in line]

    whole = train(tmp_path / "a", 4)
    train(tmp_path / "b", 2)
    resumed = train(tmp_path / "b", 4, "resume=true")
    key = lambda m: (m["step"], m[TRAIN["lm_loss"]], m[TRAIN["q_halt_loss"]])
    assert [key(m) for m in resumed] == [key(m) for m in whole] and len(whole) == 4
    a, b = (torch.load(run / "step_4.pt", weights_only=True)["model"] for run in (tmp_path / "a", tmp_path / "b"))
    assert all(torch.equal(a[k], b[k]) for k in a) and a["model.inner.puzzle_emb.weights"].abs().sum() > 0


def test_hrm_maze_cpu_preset_is_hrm_with_the_token_mlp_and_trains(maze_dir, tmp_path):
    """train/hrm_maze_cpu: HRM's two modules (one block each) with the token-mixing MLP, no EMA; it trains on mazes."""
    run = tmp_path / "run"
    assert pretrain.main(["--config-name", "train/hrm_maze_cpu", f"data_path={maze_dir}", f"checkpoint_path={run}",
                          "wandb_mode=disabled", "threads=1", "max_steps=2", "global_batch_size=8", "eval_batch_size=8",
                          "eval_max_examples=8", "eval_interval_steps=2", "log_interval_steps=1",
                          "arch.forward_dtype=float32", "arch.hidden_size=32", "arch.num_heads=2"]) == 0
    saved = torch.load(run / "step_2.pt", weights_only=True)
    names = set(saved["model"])
    assert {"model.inner.H_level.layers.0.mlp_t.down_proj.weight", "model.inner.L_level.layers.0.mlp_t.down_proj.weight"} <= names
    assert not any("self_attn" in n or "layers.1." in n for n in names) and "ema" not in saved
    assert saved["config"]["arch"]["one_step_grad"] is True
