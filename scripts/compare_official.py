"""Differential check against the official TRM's and HRM's code: same weights, batches and seed.

For the official TRM (github SamsungSAILMontreal/TinyRecursiveModels) and HRM (github sapientinc/HRM),
in float32 and bfloat16: builds their model with its loss head, writes its state dict in their
checkpoint layout (`_orig_mod.` names, `all_config.yaml` beside it), reads that file with our
checkpoint reader (models/checkpoint.py) and runs both sides from there:
- training mode, a few supervision steps on fresh batches (only halted rows take a new puzzle):
  the loss and every parameter's gradient (their puzzle embedding's per-row gradient summed per
  identifier), logits, halting and continue logits, the continue target, halting decisions, step
  counts and both latents, and the puzzle embedding after their sign-SGD step (theirs:
  CastedSparseEmbeddingSignSGD_Distributed, ours: models/optim.sign_sgd_step), after every step
  (the other weights stay fixed: their AdamATan2 is CUDA-only; scripts/compare_reference.py
  checks ours against its rule);
- evaluation mode, the same outputs over the same number of steps.
Exit status 1 on any difference. Needs a checkout of each (their dependencies: pydantic, einops);
HRM's attention calls the CUDA-only flash_attn, which is replaced here by plain scaled-dot-product
attention, so the attention kernel itself is not what is compared:

    python scripts/compare_official.py --trm /path/to/TinyRecursiveModels --hrm /path/to/HRM [--steps 4]

tests/test_compare_official.py runs it when TRM_CHECKOUT / HRM_CHECKOUT name the checkouts.
"""
import argparse
import importlib
import os
import sys
import tempfile
import types

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, ROOT)
from compare_reference import REFERENCE_PACKAGES, compare_runs, describe  # noqa: E402

BATCH_SIZE, NUM_IDS = 4, 3
ARCH = dict(H_cycles=2, L_cycles=2, hidden_size=32, expansion=4, num_heads=4, halt_max_steps=4,  # as there
            halt_exploration_prob=0.5, rms_norm_eps=1e-5, rope_theta=10000.0)
# Their code, their model class and cases: (seq_len, vocab_size, arch overrides).
OFFICIAL = {
    "trm": dict(source="models/recursive_reasoning/trm.py", name="recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
                cases={"sudoku-mlp_t": (16, 11, dict(mlp_t=True, L_layers=2, H_layers=0, pos_encodings="none",
                                                     puzzle_emb_ndim=48, puzzle_emb_len=3, no_ACT_continue=True)),
                       "maze-rope": (36, 6, dict(L_layers=1, H_layers=0, pos_encodings="rope", puzzle_emb_ndim=32,
                                                 puzzle_emb_len=16, no_ACT_continue=True))}),
    "hrm": dict(source="models/hrm/hrm_act_v1.py", name="hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",
                cases={"sudoku-rope": (16, 11, dict(H_layers=2, L_layers=1, pos_encodings="rope", puzzle_emb_ndim=48)),
                       "maze-learned": (36, 6, dict(H_layers=1, L_layers=2, pos_encodings="learned",
                                                    puzzle_emb_ndim=32))}),
}


def flash_attn_stand_in() -> types.ModuleType:
    """`flash_attn.flash_attn_func` on [batch, seq, heads, head_dim] as plain scaled-dot-product attention."""
    module = types.ModuleType("flash_attn")

    def flash_attn_func(q, k, v, causal=False):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
        return out.transpose(1, 2)

    module.flash_attn_func = flash_attn_func
    return module


def import_official(checkout: str, model: str) -> types.SimpleNamespace:
    """Their model class and loss head; their package names are ours too, so they leave sys.modules after."""
    module_name = OFFICIAL[model]["source"][:-3].replace("/", ".")
    stand_ins = {"flash_attn": flash_attn_stand_in()}
    ours = {n: m for n, m in sys.modules.items() if n.split(".")[0] in REFERENCE_PACKAGES}
    for name in ours:
        del sys.modules[name]
    sys.modules.update({k: v for k, v in stand_ins.items() if k not in sys.modules})
    saved_path = sys.path[:]
    # their `models` has no __init__.py: a namespace package, which our regular one would shadow
    sys.path[:] = [checkout] + [p for p in sys.path if os.path.abspath(p or os.curdir) != ROOT]
    try:
        model_module = importlib.import_module(module_name)
        losses = importlib.import_module("models.losses")
        sparse = importlib.import_module("models.sparse_embedding")
        cls = getattr(model_module, OFFICIAL[model]["name"].split("@")[1])
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] in REFERENCE_PACKAGES or n in stand_ins]:
            del sys.modules[name]
        sys.path[:] = saved_path
        sys.modules.update(ours)
    return types.SimpleNamespace(cls=cls, ACTLossHead=losses.ACTLossHead,
                                 SignSGD=sparse.CastedSparseEmbeddingSignSGD_Distributed)


def their_arch(model: str, case: str, dtype: str) -> dict:
    seq_len, vocab, overrides = OFFICIAL[model]["cases"][case]
    return dict(ARCH, batch_size=BATCH_SIZE, seq_len=seq_len, vocab_size=vocab, num_puzzle_identifiers=NUM_IDS,
                forward_dtype=dtype, **overrides)


def build_pair(official, model: str, case: str, dtype: str, folder: str):
    """Their model with a loss head, and ours read by our checkpoint reader from their file of it (their layout:
    the compiled loss head's state dict as `step_1`, the config dump beside it)."""
    from models.checkpoint import load_for_eval
    from utils.checkpoint import write_official

    arch = their_arch(model, case, dtype)
    torch.manual_seed(0)
    theirs = official.ACTLossHead(official.cls(arch), loss_type="stablemax_cross_entropy")
    with torch.no_grad():  # q near 0 instead of -5 so rows halt on q; a puzzle embedding away from its zero init
        theirs.model.inner.q_head.bias.zero_()
        for p in theirs.parameters():
            p.add_(0.01 * torch.randn_like(p))
        theirs.model.inner.puzzle_emb.weights.normal_()
    config_arch = {k: v for k, v in arch.items() if k not in ("batch_size", "seq_len", "vocab_size", "num_puzzle_identifiers")}
    config = {"arch": {"name": OFFICIAL[model]["name"],
                       "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"}, **config_arch},
              "global_batch_size": BATCH_SIZE, "ema": False}
    ours, _ = load_for_eval(write_official(folder, theirs.state_dict(), config), data_seq_len=arch["seq_len"])
    return theirs, ours


def make_batches(steps: int, seq_len: int, vocab: int) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"inputs": torch.randint(1, vocab, (BATCH_SIZE, seq_len), generator=g, dtype=torch.int32),
             "labels": torch.randint(1, vocab, (BATCH_SIZE, seq_len), generator=g, dtype=torch.int32),
             "puzzle_identifiers": torch.randint(0, NUM_IDS, (BATCH_SIZE,), generator=g, dtype=torch.int32)}
            for _ in range(steps)]


OUTPUTS = ("logits", "q_halt_logits", "q_continue_logits", "target_q_continue")
EMBEDDING_LR, EMBEDDING_WEIGHT_DECAY = 1e-2, 0.1


def record(z_H, z_L, halted, steps, outputs: dict) -> dict:
    out = {"z_H": z_H, "z_L": z_L, "halted": halted, "steps": steps, **{k: outputs[k] for k in OUTPUTS if k in outputs}}
    return {k: v.detach().clone() for k, v in out.items()}


def grads(head) -> dict:
    return {f"grad/{n}": p.grad.clone() for n, p in head.named_parameters() if p.grad is not None}


def run_theirs(official, head, batches: list[dict], training: bool, seed: int) -> list[dict]:
    records = []
    continue_head = not getattr(head.model.config, "no_ACT_continue", False)  # TRM: q_continue computed, never used
    hook = head.model.register_forward_hook(lambda module, args, out: records[-1].update(record(
        out[0].inner_carry.z_H, out[0].inner_carry.z_L, out[0].halted, out[0].steps,
        {k: v for k, v in out[1].items() if continue_head or k != "q_continue_logits"})))
    head.train(training)
    emb = head.model.inner.puzzle_emb
    sign_sgd = official.SignSGD(emb.buffers(), lr=EMBEDDING_LR, weight_decay=EMBEDDING_WEIGHT_DECAY, world_size=1)
    torch.manual_seed(seed)
    carry = None
    for batch in batches:
        records.append({})
        carry = head.initial_carry(batch) if carry is None else carry
        with torch.set_grad_enabled(training):
            carry, loss, _, _, _ = head(return_keys=[], carry=carry, batch=batch)
        records[-1]["loss"] = loss.detach().clone()
        if training:
            loss.backward()
            records[-1].update(grads(head))
            # their sparse embedding's gradient is per batch row: summed per identifier it is the table's
            per_id = torch.zeros_like(emb.weights).index_add_(0, emb.local_ids.long(), emb.local_weights.grad)
            records[-1]["grad/model.inner.puzzle_emb.weights"] = per_id
            sign_sgd.step()
            records[-1]["weight/model.inner.puzzle_emb.weights"] = emb.weights.clone()
            head.zero_grad(set_to_none=True)
            emb.local_weights.grad = None
    hook.remove()
    return records


def run_ours(head, batches: list[dict], training: bool, seed: int) -> list[dict]:
    from models.optim import sign_sgd_step

    records = []
    head.train(training)
    torch.manual_seed(seed)
    carry = None
    for batch in batches:
        carry = head.initial_carry(batch) if carry is None else carry
        with torch.set_grad_enabled(training):
            carry, loss, _, outputs = head(carry, batch)
        records.append(dict(record(carry.z_H, carry.z_L, carry.halted, carry.steps, outputs),
                            loss=loss.detach().clone()))
        if training:
            loss.backward()
            records[-1].update(grads(head))
            weights = head.model.inner.puzzle_emb.weights
            with torch.no_grad():
                sign_sgd_step([weights], EMBEDDING_LR, EMBEDDING_WEIGHT_DECAY)
            records[-1]["weight/model.inner.puzzle_emb.weights"] = weights.detach().clone()
            head.zero_grad(set_to_none=True)
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trm", help="checkout of github.com/SamsungSAILMontreal/TinyRecursiveModels")
    parser.add_argument("--hrm", help="checkout of github.com/sapientinc/HRM")
    parser.add_argument("--steps", type=int, default=4, help="supervision steps per case and mode (default 4)")
    args = parser.parse_args()
    if args.steps < 1:
        sys.exit(f"error: --steps: expected a positive number of steps, got {args.steps}")
    checkouts = {m: os.path.abspath(getattr(args, m)) for m in OFFICIAL if getattr(args, m)}
    if not checkouts:
        sys.exit("error: give --trm and/or --hrm (checkouts of their code)")
    official = {}
    for model, checkout in checkouts.items():
        if not os.path.isfile(os.path.join(checkout, OFFICIAL[model]["source"])):
            sys.exit(f"error: --{model} {checkout}: not a checkout of it ({OFFICIAL[model]['source']} missing)")
        try:
            official[model] = import_official(checkout, model)
        except ImportError as e:
            sys.exit(f"error: --{model} {checkout}: cannot import their code ({e}); it needs pydantic and einops")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.steps} supervision steps per case "
          f"and mode, batch {BATCH_SIZE}, eager")
    cases = differing = 0
    for dtype in ("float32", "bfloat16"):
        for model in official:
            for case, (seq_len, vocab, _) in OFFICIAL[model]["cases"].items():
                with tempfile.TemporaryDirectory() as folder:
                    theirs, ours = build_pair(official[model], model, case, dtype, folder)
                batches = make_batches(args.steps, seq_len, vocab)
                for mode, training in (("train", True), ("eval", False)):
                    theirs_run = run_theirs(official[model], theirs, batches, training, seed=5)
                    ours_run = run_ours(ours, batches, training, seed=5)
                    result = compare_runs(theirs_run, ours_run)
                    cases, differing = cases + 1, differing + (result is not None)
                    print(describe(f"{model} {case} {dtype} {mode}", result, ours_run), flush=True)
    print("all identical" if not differing else f"{differing} of {cases} cases differ")
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
