"""Differential check against the authors' code: whole training steps, same weights, batches and seed.

For EqR and TRM, in float32 and bfloat16, runs the authors' training step (`train_batch` of
their pretrain.py: ACT forward, loss, backward, learning-rate schedule, AdamATan2 step, then
their EMA update) and ours (`train_step` of our pretrain.py, which its loop runs) from the
same weights on the same batches, and after every step compares the loss, logits, halting
logits and decisions, step counts, latents, learning rate, every parameter's gradient, every
weight and buffer, and every EMA weight. Prints one line per case; exit status 1 on any
difference. Needs the authors' repository and its dependencies (pydantic, hydra, wandb, ...)
and an `adam_atan2` module (on a CPU, a stand-in with the CUDA kernel's update rule; see
docs/reference_notes.md):

    python scripts/compare_reference.py --ref /path/to/locuslab-EqR [--steps 20]

Not part of the test suite; tests/test_compare_reference.py tests the comparison itself.
Then, for TRM with `act_inference=true` (their halting at evaluation time, exploration off), it runs
their model step by step and our grid (evaluation/grid.py) with the same halting rules, and compares
each row's first halting step and its answer there.
"""
import argparse
import math
import os
import sys
from types import SimpleNamespace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH_SIZE = 4
# Paper optimiser settings, except a larger lr and a short schedule so that a few steps cover
# warm-up and cosine decay and move the weights far enough to change halting decisions.
TRAIN = dict(lr=1e-3, lr_warmup_steps=5, lr_min_ratio=0.1, beta1=0.9, beta2=0.95, weight_decay=1.0, ema_rate=0.999)
ARCH = dict(H_cycles=2, L_cycles=2, H_layers=0, hidden_size=64, expansion=4, num_heads=4, halt_max_steps=4,
            halt_exploration_prob=0.1)
MODELS = {"eqr": {}, "trm": dict(lambda_=1.0, noise_scale=0.0, random_init=False)}
TASKS = {  # name: (seq_len, vocab_size, arch overrides)
    "sudoku-mlp_t": (16, 11, dict(mlp_t=True, L_layers=2, pos_encodings="none")),
    "maze-rope": (36, 6, dict(L_layers=1, pos_encodings="rope")),
    "maze-rope2d": (36, 6, dict(L_layers=1, pos_encodings="rope2d")),
}
CASES = [("eqr", task) for task in TASKS] + [("trm", "sudoku-mlp_t"), ("trm", "maze-rope")]
REFERENCE_PACKAGES = ("models", "utils", "config", "dataset", "evaluators", "pretrain")  # names we share


def difference(theirs: torch.Tensor, ours: torch.Tensor) -> float:
    """0.0 when both hold the same values (NaN where the other has NaN), else the largest |theirs - ours|;
    inf for a shape or dtype mismatch or a NaN against a number."""
    if theirs.shape != ours.shape or theirs.dtype != ours.dtype:
        return math.inf
    a, b = theirs.detach().double(), ours.detach().double()
    differ = (a != b) & ~(a.isnan() & b.isnan())
    if not differ.any():
        return 0.0
    return (a - b).abs()[differ].nan_to_num(nan=math.inf).max().item()


def in_step_order(name: str) -> tuple:
    """Outputs of the forward first, then gradients, weights and EMA weights: the order a step makes them."""
    return ["grad", "weight", "ema"].index(name.split("/")[0]) + 1 if "/" in name else 0, name


def compare_runs(theirs: list[dict], ours: list[dict]):
    """Two runs as one {name: tensor} dict per step -> None when identical, else the first and the
    largest difference, each as (step, name, |d|); a tensor or step only one run has counts as inf."""
    first = largest = None
    for step in range(1, max(len(theirs), len(ours)) + 1):
        t = theirs[step - 1] if step <= len(theirs) else {}
        o = ours[step - 1] if step <= len(ours) else {}
        for name in sorted(set(t) | set(o), key=in_step_order):
            d = difference(t[name], o[name]) if name in t and name in o else math.inf
            if d > 0:
                first = first or (step, name, d)
                largest = (step, name, d) if largest is None or d > largest[2] else largest
    return None if first is None else (first, largest)


def snapshot(prefix: str, tensors: dict) -> dict:
    return {f"{prefix}/{name}": t.detach().clone() for name, t in tensors.items()}


def import_reference(ref_dir: str) -> SimpleNamespace:
    """The authors' modules we need; their top-level package names are ours too, so they leave sys.modules after."""
    precision = torch.get_float32_matmul_precision()
    sys.path.insert(0, ref_dir)
    try:
        import pretrain  # sets the float32 matmul precision to "high": restored below, both sides run under ours
        from adam_atan2 import AdamATan2
        from models.ema import EMAHelper
        from models.eqr import EqRModel
        from models.losses.loss_heads import ACTLossHead
        from models.trm import TRMModel
        from utils.training import TrainState
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] in REFERENCE_PACKAGES]:
            del sys.modules[name]
        sys.path.remove(ref_dir)
        torch.set_float32_matmul_precision(precision)
    return SimpleNamespace(train_batch=pretrain.train_batch, TrainState=TrainState, AdamATan2=AdamATan2,
                           EMAHelper=EMAHelper, ACTLossHead=ACTLossHead, models={"eqr": EqRModel, "trm": TRMModel})


def build_pair(ref, model: str, task: str, dtype: str):
    """The authors' model with a loss head, and ours with the same weights and buffers."""
    from models.eqr import ModelConfig, RecurrentReasoner
    from models.losses import ACTLossHead

    seq_len, vocab, overrides = TASKS[task]
    arch = dict(ARCH, batch_size=BATCH_SIZE, seq_len=seq_len, vocab_size=vocab, forward_dtype=dtype,
                **overrides, **MODELS[model])  # each side ignores the other's model-only keys
    torch.manual_seed(0)
    theirs = ref.ACTLossHead(ref.models[model](arch), loss_type="stablemax_cross_entropy")
    with torch.no_grad():  # q near 0 instead of -5, so that rows halt on q as well as at halt_max_steps
        theirs.model.inner.q_head.bias.zero_()
        for p in theirs.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ours = ACTLossHead(RecurrentReasoner(ModelConfig.from_dict(arch)))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def make_batches(steps: int, seq_len: int, vocab: int) -> list[dict]:
    """A fresh random batch per step, as the loader hands out; only halted rows take their puzzle."""
    g = torch.Generator().manual_seed(1)
    return [{"inputs": torch.randint(1, vocab, (BATCH_SIZE, seq_len), generator=g, dtype=torch.int32),
             "labels": torch.randint(1, vocab, (BATCH_SIZE, seq_len), generator=g, dtype=torch.int32),
             "puzzle_identifiers": torch.zeros(BATCH_SIZE, dtype=torch.int32)} for _ in range(steps)]


def step_outputs(z_H, z_L, halted, steps, logits, q) -> dict:
    return {"z_H": z_H.detach().clone(), "z_L": z_L.detach().clone(), "halted": halted.clone(),
            "steps": steps.clone(), "logits": logits.detach().clone(), "q_halt_logits": q.detach().clone()}


def record_grads(head, records: list[dict]):
    """An optimizer pre-step hook that stores the learning rate and every gradient of `head` in records[-1]."""
    def hook(optimizer, args, kwargs):
        records[-1]["lr"] = torch.tensor(optimizer.param_groups[0]["lr"], dtype=torch.float64)
        records[-1].update(snapshot("grad", {n: p.grad for n, p in head.named_parameters() if p.grad is not None}))
    return hook


def run_reference(ref, head, batches: list[dict], seed: int) -> list[dict]:
    """The authors' training loop body: `train_batch` (forward, backward, lr, optimizer step), then the EMA update."""
    optimizer = ref.AdamATan2(head.parameters(), lr=0, weight_decay=TRAIN["weight_decay"],
                              betas=(TRAIN["beta1"], TRAIN["beta2"]))
    ema = ref.EMAHelper(mu=TRAIN["ema_rate"])
    ema.register(head)
    config = SimpleNamespace(lr_warmup_steps=TRAIN["lr_warmup_steps"], lr_min_ratio=TRAIN["lr_min_ratio"],
                             arch=SimpleNamespace(halt_max_steps=ARCH["halt_max_steps"]))  # what train_batch reads
    state = ref.TrainState(model=head, optimizers=[optimizer], optimizer_lrs=[TRAIN["lr"]], carry=None, step=0,
                           total_steps=len(batches), steps_per_epoch=len(batches), ema_helper=ema)
    records = []
    optimizer.register_step_pre_hook(record_grads(head, records))
    head.model.register_forward_hook(lambda module, args, out: records[-1].update(step_outputs(
        out[0].inner_carry.z_H, out[0].inner_carry.z_L, out[0].halted, out[0].steps,
        out[1]["logits"], out[1]["q_halt_logits"])))
    head.register_forward_hook(lambda module, args, out: records[-1].update(loss=out[1].detach().clone()))
    head.train()
    torch.manual_seed(seed)
    for batch in batches:
        records.append({})
        ref.train_batch(config, state, batch, global_batch_size=len(batch["inputs"]), rank=0, world_size=1)
        ema.update(head)
        records[-1].update(snapshot("weight", head.state_dict()), **snapshot("ema", ema.shadow))
    return records


def run_ours(head, batches: list[dict], seed: int) -> list[dict]:
    """pretrain.py's training step (train_step, its optimizer and EMA), one process, batch after batch."""
    import pretrain

    tc = SimpleNamespace(**TRAIN, ema=True, global_batch_size=BATCH_SIZE)  # the TrainConfig keys the step reads
    optimizer, ema = pretrain.optimizer_and_ema(head, tc)
    records = []
    optimizer.register_step_pre_hook(record_grads(head, records))
    head.register_forward_hook(lambda module, args, out: records[-1].update(loss=out[1].detach().clone(), **step_outputs(
        out[0].z_H, out[0].z_L, out[0].halted, out[0].steps, out[3]["logits"], out[3]["q_halt_logits"])))
    head.train()
    torch.manual_seed(seed)
    carry = None
    for step, batch in enumerate(batches, start=1):
        records.append({})
        carry = pretrain.train_step(step, carry, batch, head, optimizer, ema, tc, len(batches))[0]
        records[-1].update(snapshot("weight", head.state_dict()), **snapshot("ema", ema.shadow))
    return records


def describe(case: str, result, records: list[dict]) -> str:
    q_halts = sum(int((r["halted"] & (r["steps"] < ARCH["halt_max_steps"])).sum()) for r in records)
    if result is None:
        return (f"{case}: identical, {len(records)} steps x {len(records[0])} tensors "
                f"({q_halts} rows halted on q before halt_max_steps)")
    (step, name, d), (big_step, big_name, big_d) = result
    return (f"{case}: DIFFERS, first at step {step} in {name} (max |d| {d:.3g}); "
            f"largest {big_d:.3g} in {big_name} at step {big_step}")


HALT_RULES = [dict(halt_threshold=t, halt_confirm_steps=c, halt_confirm_mode=m, no_ACT_continue=n)
              for t in (0.0, 0.03) for c in (0, 1, 2) for m in ("consecutive", "cumulative") if c or m == "consecutive"
              for n in (True, False)]


def compare_halting(ref, task: str, rule: dict, rows: int = 32) -> tuple[bool, int]:
    """Their TRM (eval mode, act_inference) against our grid on one batch -> (same halting steps and answers,
    rows that halted before the cap)."""
    from evaluation.grid import GridSpec, run_batch
    from models.eqr import TORCH_SAMPLER

    seq_len, vocab, overrides = TASKS[task]
    arch = dict(ARCH, batch_size=rows, seq_len=seq_len, vocab_size=vocab, forward_dtype="float32", **overrides,
                **MODELS["trm"], **rule, act_inference=True, halt_exploration_prob=0.0, halt_max_steps=8)
    torch.manual_seed(0)
    theirs = ref.models["trm"](arch).eval()
    with torch.no_grad():
        theirs.inner.q_head.bias.zero_()
        for p in theirs.parameters():
            p.add_(0.01 * torch.randn_like(p))
    from models.eqr import ModelConfig, RecurrentReasoner
    ours = RecurrentReasoner(ModelConfig.from_dict(arch))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    g = torch.Generator().manual_seed(2)
    batch = {"inputs": torch.randint(1, vocab, (rows, seq_len), generator=g, dtype=torch.int32),
             "puzzle_identifiers": torch.zeros(rows, dtype=torch.int32)}
    cap = arch["halt_max_steps"]
    first = torch.zeros(rows, dtype=torch.long)
    answer = torch.zeros(rows, seq_len, dtype=torch.int32)
    with torch.inference_mode():
        carry = theirs.initial_carry(batch)
        for step in range(1, cap + 1):
            carry, out = theirs(carry, batch)
            new = carry.halted & (first == 0)
            first[new] = step
            answer[new] = out["logits"].argmax(-1).int()[new]
    spec = GridSpec((cap,), (1,), ours.config.blocks_per_step, halt_rules=(ours.config.halt_rule,))
    mine = {"inputs": batch["inputs"], "labels": answer, "mask": torch.ones(rows, dtype=torch.bool),
            "index": torch.arange(rows)}
    cells, _, _, found = run_batch(ours.inner.eval(), mine, spec, TORCH_SAMPLER)
    ours_first = torch.where(found["halt_step"] > 0, found["halt_step"], cap)
    solved = int(cells[0, 0, spec.rules.index("traj1+halt"), 0])  # our halted answers scored against theirs
    return torch.equal(ours_first, first) and solved == rows, int((first < cap).sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="checkout of github.com/locuslab/EqR")
    parser.add_argument("--steps", type=int, default=20, help="training steps per case (default 20)")
    args = parser.parse_args()
    if args.steps < 1:
        sys.exit(f"error: --steps: expected a positive number of training steps, got {args.steps}")
    ref_dir = os.path.abspath(args.ref)
    if not os.path.isfile(os.path.join(ref_dir, "models", "eqr.py")):
        sys.exit(f"error: {args.ref}: not a checkout of the reference (models/eqr.py missing)")
    try:
        ref = import_reference(ref_dir)
    except ImportError as e:
        sys.exit(f"error: {args.ref}: cannot import the reference ({e}); it needs its dependencies and an "
                 f"adam_atan2 module (docs/reference_notes.md)")
    sys.path.insert(0, ROOT)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.steps} training steps per case, "
          f"batch {BATCH_SIZE}, eager")
    differing = 0
    for dtype in ("float32", "bfloat16"):
        for model, task in CASES:
            theirs, ours = build_pair(ref, model, task, dtype)
            batches = make_batches(args.steps, *TASKS[task][:2])
            ref_records = run_reference(ref, theirs, batches, seed=5)
            our_records = run_ours(ours, batches, seed=5)
            result = compare_runs(ref_records, our_records)
            differing += result is not None
            print(describe(f"{model} {task} {dtype}", result, our_records), flush=True)
    print("all identical" if not differing else f"{differing} of {2 * len(CASES)} cases differ")
    halting_differ = 0
    for task in ("sudoku-mlp_t", "maze-rope"):
        for rule in HALT_RULES:
            same, early = compare_halting(ref, task, rule)
            halting_differ += not same
            print(f"trm {task} act_inference {rule}: {'same' if same else 'DIFFERENT'} halting steps and answers "
                  f"({early} of 32 rows halted before the cap)", flush=True)
    sys.exit(1 if differing or halting_differ else 0)


if __name__ == "__main__":
    main()
