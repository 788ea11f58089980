"""Checkpoint loading for evaluation: our files, the authors' files, and files that must be refused."""
import hashlib
import os
import random
import sys
import types
from dataclasses import make_dataclass

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError, load_for_eval
from utils.checkpoint import read_checkpoint, read_run_checkpoint, strip_orig_mod, write_slim
from utils.files import atomic_save
from models.ema import EMA
from models.eqr import ModelConfig, RecurrentReasoner
from models.losses import ACTLossHead

# Names and shapes of the tensors in the authors' released eqr.pth files.
SUDOKU_SHAPES = {
    "model.inner.embed_tokens.embedding_weight": (11, 512),
    "model.inner.lm_head.weight": (11, 512),
    "model.inner.q_head.weight": (2, 512),
    "model.inner.q_head.bias": (2,),
    **{f"model.inner.L_level.layers.{i}.{name}": shape for i in range(2) for name, shape in [
        ("mlp_t.gate_up_proj.weight", (512, 81)),
        ("mlp_t.down_proj.weight", (81, 256)),
        ("mlp.gate_up_proj.weight", (3072, 512)),
        ("mlp.down_proj.weight", (512, 1536)),
    ]},
}
MAZE_SHAPES = {
    "model.inner.embed_tokens.embedding_weight": (6, 128),
    "model.inner.lm_head.weight": (6, 128),
    "model.inner.q_head.weight": (2, 128),
    "model.inner.q_head.bias": (2,),
    "model.inner.L_level.layers.0.self_attn.qkv_proj.weight": (384, 128),
    "model.inner.L_level.layers.0.self_attn.o_proj.weight": (128, 128),
    "model.inner.L_level.layers.0.mlp.gate_up_proj.weight": (1024, 128),
    "model.inner.L_level.layers.0.mlp.down_proj.weight": (128, 512),
}
# The authors' arch config for each preset (config/arch/eqr.yaml + the train preset), as saved in `config`.
EQR_ARCH = dict(name="eqr@EqRModel", short_name="EqR", loss=dict(name="losses@ACTLossHead",
                loss_type="stablemax_cross_entropy"), halt_exploration_prob=0.1, halt_max_steps=16, H_cycles=3,
                L_cycles=6, H_layers=0, L_layers=2, hidden_size=512, num_heads=8, expansion=4,
                pos_encodings="rope", board_height=9, board_width=9, forward_dtype="bfloat16", mlp_t=False,
                lambda_=0.95, noise_scale=0.01, H_init_std=1.0, L_init_std=1.0)
PRESETS = {
    "sudoku": dict(shapes=SUDOKU_SHAPES, params=4_855_298, seq_len=81, vocab=11,
                   arch={**EQR_ARCH, "mlp_t": True}),
    "maze": dict(shapes=MAZE_SHAPES, params=263_938, seq_len=900, vocab=6,
                 arch={**EQR_ARCH, "L_layers": 1, "L_cycles": 4, "hidden_size": 128, "board_height": None,
                       "board_width": None}),
}
SMALL_ARCH = dict(seq_len=16, vocab_size=5, hidden_size=32, num_heads=2, L_layers=1, H_cycles=2, L_cycles=2)


def with_orig_mod(state: dict) -> dict:
    """Names as a torch.compile'd loss head writes them."""
    return {f"_orig_mod.{k}": v for k, v in state.items()}


def reference_carry(module_name: str, batch: int, seq_len: int, hidden: int):
    """An instance of a dataclass pickled as `<module_name>.ModelCarry`, like the authors' ACT carry."""
    module = types.ModuleType(module_name)
    latent = make_dataclass("LatentCarry", ["z_H", "z_L"])
    carry = make_dataclass("ModelCarry", ["inner_carry", "steps", "halted", "current_data", "global_step"])
    for cls in (latent, carry):
        cls.__module__ = module_name
        setattr(module, cls.__name__, cls)
    z = torch.zeros(batch, seq_len, hidden, dtype=torch.bfloat16)
    value = carry(latent(z, z.clone()), torch.zeros(batch, dtype=torch.int32), torch.ones(batch, dtype=torch.bool),
                  {"inputs": torch.zeros(batch, seq_len, dtype=torch.int32)}, 7)
    return module, value


def write_reference_file(path, model_state: dict, arch: dict, shadow: dict | None, carry_module="models.eqr"):
    """A checkpoint with every key the authors' pretrain.py writes; the carry's module exists only while saving."""
    module, carry = reference_carry(carry_module, batch=2, seq_len=4, hidden=8)
    philox = np.random.Generator(np.random.Philox(3))
    ckpt = {
        "step": 1234, "total_steps": 5000, "model": model_state,
        "optimizers": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(3)}},
                        "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "params": [0]}]}],
        "optimizer_lrs": [1e-4], "carry": carry,
        "rng": {"torch": torch.random.get_rng_state(), "cuda": None},
        "numpy": np.random.get_state(), "python": random.getstate(),
        "train_dataset": {"split": "train", "_iters": 2, "train_state": {
            "set_names": ["all"], "set_idx": 0, "start_index": 5, "epoch_idx": 1,
            "group_order": list(philox.permutation(4)), "rng_state": philox.bit_generator.state}},
        "iteration": 3, "config": {"arch": arch, "lr": 1e-4, "global_batch_size": 768, "ema": True},
        "wandb_run_id": None,
    }
    if shadow is not None:
        ckpt["ema"] = {"mu": 0.999, "shadow": shadow}
    saved = sys.modules.get(carry_module)
    sys.modules[carry_module] = module
    try:
        torch.save(ckpt, path)
    finally:
        if saved is None:
            del sys.modules[carry_module]
        else:
            sys.modules[carry_module] = saved
    assert getattr(sys.modules.get(carry_module), "ModelCarry", None) is None  # nothing to import it from


def random_state(shapes: dict) -> dict:
    return {name: torch.randn(shape) * 0.05 for name, shape in shapes.items()}


def act_step(model, seq_len: int, vocab: int, seed: int = 1):
    g = torch.Generator().manual_seed(0)
    batch = {"inputs": torch.randint(0, vocab, (2, seq_len), generator=g),
             "labels": torch.randint(0, vocab, (2, seq_len), generator=g),
             "puzzle_identifiers": torch.zeros(2, dtype=torch.int32)}
    torch.manual_seed(seed)  # EqR draws its initial latents and noise from torch's generator
    with torch.no_grad():
        _, _, _, outputs = model(model.initial_carry(batch), batch)
    return outputs["logits"].float()


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["sudoku", "maze"])
def test_authors_file_loads_with_ema_and_gives_the_same_logits(tmp_path, preset):
    p = PRESETS[preset]
    assert sum(np.prod(s) for s in p["shapes"].values()) == p["params"]
    trained, shadow = random_state(p["shapes"]), random_state(p["shapes"])
    path = str(tmp_path / "eqr.pth")
    write_reference_file(path, with_orig_mod(trained), p["arch"], with_orig_mod(shadow))

    model, info = load_for_eval(path, data_seq_len=p["seq_len"], data_vocab_size=p["vocab"])
    assert not model.training
    assert info["format"] == "reference" and info["read_with"] == "restricted" and info["ema"]
    assert info["step"] == 1234 and info["train_config"]["lr"] == 1e-4
    assert info["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert (info["model_config"]["seq_len"], info["model_config"]["vocab_size"]) == (p["seq_len"], p["vocab"])
    assert info["model_config"]["random_init"] and info["model_config"]["lambda_"] == 0.95
    loaded = model.state_dict()
    assert set(loaded) == set(p["shapes"])
    assert all(torch.equal(loaded[k], shadow[k]) for k in shadow)

    arch = {k: v for k, v in p["arch"].items() if k in ModelConfig.__dataclass_fields__}
    direct = ACTLossHead(RecurrentReasoner(ModelConfig(seq_len=p["seq_len"], vocab_size=p["vocab"], **arch))).eval()
    direct.load_state_dict(shadow, strict=True)
    assert torch.equal(act_step(model, p["seq_len"], p["vocab"]), act_step(direct, p["seq_len"], p["vocab"]))


def test_authors_sudoku_file_needs_no_data_but_maze_does(tmp_path):
    p = PRESETS["maze"]
    path = str(tmp_path / "maze.pth")
    write_reference_file(path, with_orig_mod(random_state(p["shapes"])), p["arch"], None)
    with pytest.raises(CheckpointError, match="seq_len.*data_path"):
        load_for_eval(path)
    _, info = load_for_eval(path, data_seq_len=900)
    assert not info["ema"]
    with pytest.raises(CheckpointError, match="vocab_size 6, the data has 11"):
        load_for_eval(path, data_seq_len=900, data_vocab_size=11)


def small_reference_state(config: ModelConfig) -> dict:
    """Random tensors with the names, shapes and dtypes of a loss head built from `config`."""
    state = ACTLossHead(RecurrentReasoner(config)).state_dict()
    return {k: torch.randn_like(v.float()).to(v.dtype) for k, v in state.items()}


def test_authors_trm_file_keeps_its_fixed_latents(tmp_path):
    arch = {**EQR_ARCH, "name": "trm@TRMModel", "short_name": "TRM", "no_ACT_continue": True, "mlp_t": True,
            "pos_encodings": "none", "hidden_size": 32, "num_heads": 2, "L_layers": 1}
    for key in ("lambda_", "noise_scale", "H_init_std", "L_init_std"):  # TRMConfig has none of these
        arch.pop(key)
    state = small_reference_state(ModelConfig(seq_len=16, vocab_size=5, hidden_size=32, num_heads=2, L_layers=1,
                                              mlp_t=True, random_init=False))
    assert "model.inner.H_init" in state and state["model.inner.H_init"].dtype == torch.bfloat16
    shadow = {k: v + 1 for k, v in state.items() if not k.endswith("_init")}
    path = str(tmp_path / "trm.pth")
    write_reference_file(path, {f"model._orig_mod.{k[6:]}": v for k, v in state.items()}, arch,
                         with_orig_mod(shadow), carry_module="models.trm")

    model, info = load_for_eval(path)  # seq_len from the mlp_t weights
    cfg = info["model_config"]
    assert (cfg["random_init"], cfg["lambda_"], cfg["noise_scale"], cfg["seq_len"]) == (False, 1.0, 0.0, 16)
    assert torch.equal(model.model.inner.H_init, state["model.inner.H_init"])
    assert torch.equal(model.model.inner.L_init, state["model.inner.L_init"])
    assert torch.equal(model.model.inner.lm_head.weight, shadow["model.inner.lm_head.weight"])


def our_checkpoint(config: ModelConfig, with_ema: bool):
    model = ACTLossHead(RecurrentReasoner(config))
    ema = EMA(model, rate=0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the trained weights now differ from the shadow
    ckpt = {"format": "eqr/1", "step": 42, "config": {"arch": {**config.to_dict(), "loss": {
                "loss_type": "softmax_cross_entropy"}}, "lr": 1e-4},
            "model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []},
            "rng": {"torch": torch.random.get_rng_state()}}
    if with_ema:
        ckpt["ema"] = ema.state_dict()
    return model, ema, ckpt


@pytest.mark.parametrize("with_ema", [True, False])
@pytest.mark.parametrize("random_init", [True, False])
def test_our_file_round_trips(tmp_path, with_ema, random_init):
    config = ModelConfig(**SMALL_ARCH, random_init=random_init, forward_dtype="float32")
    trained, ema, ckpt = our_checkpoint(config, with_ema)
    path = str(tmp_path / "step_42.pt")
    atomic_save(ckpt, path)

    model, info = load_for_eval(path, data_seq_len=16, data_vocab_size=5)
    assert info["read_with"] == "weights_only" and info["format"] == "eqr/1"
    assert info["ema"] == with_ema and info["step"] == 42 and info["loss_type"] == "softmax_cross_entropy"
    assert info["model_config"] == config.to_dict()
    expected = dict(trained.state_dict())
    if with_ema:
        expected.update(ema.shadow)
    loaded = model.state_dict()
    assert set(loaded) == set(expected) and all(torch.equal(loaded[k], expected[k]) for k in expected)
    if with_ema:
        ema.copy_to(trained)
    trained.eval()
    assert torch.equal(act_step(model, 16, 5), act_step(trained, 16, 5))


def test_overrides_and_data_mismatch(tmp_path):
    config = ModelConfig(**SMALL_ARCH)
    _, _, ckpt = our_checkpoint(config, with_ema=True)
    path = str(tmp_path / "ours.pt")
    atomic_save(ckpt, path)
    model, info = load_for_eval(path, overrides={"forward_dtype": "float32", "H_cycles": 5, "halt_max_steps": 4})
    assert model.model.config.H_cycles == 5 and info["model_config"]["forward_dtype"] == "float32"
    with pytest.raises(CheckpointError, match="overrides.H_layerz is not a model option"):
        load_for_eval(path, overrides={"H_layerz": 1})
    with pytest.raises(CheckpointError, match="seq_len 16, the data has 81"):
        load_for_eval(path, data_seq_len=81)


def one_line_error(path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as err:
        load_for_eval(str(path), **kwargs)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "config": {"arch": {}}, "carry": Payload()}, path)
    message = one_line_error(path)
    assert "refused to unpickle" in message and "system" in message and "trust_checkpoint=true" in message
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        read_checkpoint(str(path))
    with pytest.raises(CheckpointError):  # the plain loader refuses it as well
        read_run_checkpoint(str(path))
    assert not marker.exists()


def test_trusting_a_file_unpickles_anything(tmp_path):
    made = tmp_path / "made-by-unpickling"

    class MakesAFolder:
        def __reduce__(self):
            return os.makedirs, (str(made),)

    path = tmp_path / "trusted.pth"
    torch.save({"extra": MakesAFolder()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(str(path))
    assert not made.exists()
    ckpt, how = read_checkpoint(str(path), trust_checkpoint=True)
    assert how == "trusted" and made.is_dir()


def test_broken_files_give_one_line_errors(tmp_path):
    config = ModelConfig(**SMALL_ARCH)
    _, _, ckpt = our_checkpoint(config, with_ema=True)
    good = tmp_path / "good.pt"
    atomic_save(ckpt, str(good))
    data = good.read_bytes()

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    assert "not a readable checkpoint" in one_line_error(truncated)

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(data[:4] + b"\x13\x37" * 64 + data[132:])
    assert "corrupt checkpoint (checksum mismatch in" in one_line_error(corrupt)

    damaged = bytearray(data)
    damaged[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # inside a tensor record
    (tmp_path / "damaged.pt").write_bytes(damaged)
    assert "corrupt checkpoint (checksum mismatch in" in one_line_error(tmp_path / "damaged.pt")

    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    assert "not a torch checkpoint" in one_line_error(text)

    assert "no such checkpoint file" in one_line_error(tmp_path / "absent.pt")

    no_model = tmp_path / "no_model.pt"
    atomic_save({k: v for k, v in ckpt.items() if k != "model"}, str(no_model))
    assert "no 'model' entry" in one_line_error(no_model)

    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    assert "expected a dict checkpoint, got list" in one_line_error(listing)


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    config = ModelConfig(**SMALL_ARCH)
    _, _, ckpt = our_checkpoint(config, with_ema=False)

    wrong = dict(ckpt, config={"arch": {**config.to_dict(), "hidden_size": 64, "num_heads": 4}})
    atomic_save(wrong, str(tmp_path / "wide.pt"))
    message = one_line_error(tmp_path / "wide.pt")
    assert message.endswith("parameter model.inner.embed_tokens.embedding_weight has shape (5, 32), "
                            "architecture expects (5, 64)")

    missing = dict(ckpt, model={k: v for k, v in ckpt["model"].items() if "o_proj" not in k})
    atomic_save(missing, str(tmp_path / "missing.pt"))
    assert "missing parameter model.inner.L_level.layers.0.self_attn.o_proj.weight" in one_line_error(
        tmp_path / "missing.pt")

    extra = dict(ckpt, model={**ckpt["model"], "model.inner.puzzle_emb.weights": torch.zeros(3)})
    atomic_save(extra, str(tmp_path / "extra.pt"))
    assert "parameter model.inner.puzzle_emb.weights is not in the architecture" in one_line_error(
        tmp_path / "extra.pt")

    unknown_option = dict(ckpt, config={"arch": {**config.to_dict(), "hiden_size": 64}})
    atomic_save(unknown_option, str(tmp_path / "typo.pt"))
    assert "arch.hiden_size: unknown model option" in one_line_error(tmp_path / "typo.pt")

    # The authors' Sudoku weights against the Maze architecture (attention instead of mlp_t).
    p = PRESETS["sudoku"]
    path = tmp_path / "sudoku_as_maze.pth"
    write_reference_file(str(path), with_orig_mod(random_state(p["shapes"])),
                         {**p["arch"], "mlp_t": False}, None)
    assert "missing parameter model.inner.L_level.layers.0.self_attn.qkv_proj.weight" in one_line_error(
        path, data_seq_len=81)


def test_strip_orig_mod():
    state = {"_orig_mod.model.inner.a": 1, "model._orig_mod.inner.b": 2, "model.inner.c": 3}
    assert strip_orig_mod(state) == {"model.inner.a": 1, "model.inner.b": 2, "model.inner.c": 3}


def test_unknown_format_and_ignored_reference_keys(tmp_path):
    config = ModelConfig(**SMALL_ARCH)
    _, _, ckpt = our_checkpoint(config, with_ema=False)
    atomic_save(dict(ckpt, format="eqr/9"), str(tmp_path / "future.pt"))
    assert "checkpoint format 'eqr/9' is not one this code reads" in one_line_error(tmp_path / "future.pt")
    # resume and shipping read only our own files, of a version this code reads
    atomic_save({k: v for k, v in ckpt.items() if k != "format"}, str(tmp_path / "unversioned.pt"))
    for name, version in (("future.pt", "'eqr/9'"), ("unversioned.pt", "None")):
        with pytest.raises(CheckpointError, match=f"checkpoint format {version} is not one this code reads \\(eqr/1\\)"):
            write_slim(str(tmp_path / name), str(tmp_path / "shipped.pt"))
    assert not (tmp_path / "shipped.pt").exists()

    p = PRESETS["sudoku"]
    path = str(tmp_path / "extra_keys.pth")
    write_reference_file(path, with_orig_mod(random_state(p["shapes"])), {**p["arch"], "puzzle_emb_ndim": 0}, None)
    _, info = load_for_eval(path)
    assert info["ignored_arch_keys"] == ["puzzle_emb_ndim"]
    # Trusting the file means a plain unpickle, which needs the authors' modules for the carry.
    with pytest.raises(CheckpointError, match="not a readable checkpoint .*ModelCarry"):
        load_for_eval(path, trust_checkpoint=True)
