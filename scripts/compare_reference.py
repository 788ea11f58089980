"""Differential check against the authors' code: same weights, same batch, same seed.

Runs a few ACT training steps of the reference EqR model and of ours and prints, per step,
the loss of each, the largest logit difference, whether the halting decisions agree and
the largest gradient difference. Not part of the test suite (it needs the authors'
repository and its dependencies, e.g. pydantic and colorama):

    python scripts/compare_reference.py --ref /path/to/locuslab-EqR

Exit status 1 if any difference is non-zero.
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {  # name: (seq_len, vocab_size, arch overrides)
    "sudoku-mlp_t": (16, 11, dict(mlp_t=True, L_layers=2, pos_encodings="rope")),
    "maze-rope": (36, 6, dict(L_layers=1, pos_encodings="rope")),
    "rope2d": (36, 6, dict(L_layers=1, pos_encodings="rope2d")),
}


def import_reference(ref_dir):
    sys.path.insert(0, ref_dir)
    import models.eqr as ref_model  # the reference's packages share our top-level names
    import models.losses.loss_heads as ref_losses
    for name in [n for n in sys.modules if n.split(".")[0] in ("models", "utils")]:
        del sys.modules[name]
    sys.path.remove(ref_dir)
    return ref_model, ref_losses


def run_case(ref_model, ref_losses, seq_len, vocab, overrides, dtype, steps=3, batch_size=4):
    from models.eqr import ModelConfig, RecurrentReasoner
    from models.losses import ACTLossHead

    arch = dict(batch_size=batch_size, seq_len=seq_len, vocab_size=vocab, H_cycles=2, L_cycles=2, H_layers=0,
                hidden_size=64, expansion=4, num_heads=4, halt_max_steps=4, halt_exploration_prob=0.1,
                forward_dtype=dtype, **overrides)
    torch.manual_seed(0)
    ref = ref_losses.ACTLossHead(ref_model.EqRModel(arch), loss_type="stablemax_cross_entropy")
    with torch.no_grad():  # move q_head off its zero init so halting decisions matter
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ours = ACTLossHead(RecurrentReasoner(ModelConfig.from_dict(arch)))
    ours.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(1)
    batch = {"inputs": torch.randint(1, vocab, (batch_size, seq_len), generator=g, dtype=torch.int32),
             "labels": torch.randint(1, vocab, (batch_size, seq_len), generator=g, dtype=torch.int32),
             "puzzle_identifiers": torch.zeros(batch_size, dtype=torch.int32)}
    grad_name = "model.inner.lm_head.weight"

    torch.manual_seed(5)
    ref_carry, ref_steps = ref.initial_carry(batch), []
    for _ in range(steps):
        ref_carry, loss, _, out, _ = ref(return_keys=["logits"], carry=ref_carry, batch=batch)
        loss.backward()
        ref_steps.append((loss.item(), out["logits"].float(), ref_carry.halted.clone(),
                          dict(ref.named_parameters())[grad_name].grad.clone()))
    torch.manual_seed(5)
    carry, worst = ours.initial_carry(batch), 0.0
    for step, (ref_loss, ref_logits, ref_halted, ref_grad) in enumerate(ref_steps):
        carry, loss, _, out = ours(carry, batch)
        loss.backward()
        d_logits = (ref_logits - out["logits"].float()).abs().max().item()
        d_grad = (ref_grad - dict(ours.named_parameters())[grad_name].grad).abs().max().item()
        same_halt = bool((ref_halted == carry.halted).all())
        print(f"  step {step}: loss ref {ref_loss:.12f} ours {loss.item():.12f} | max |d logits| {d_logits:.3g} "
              f"| halting agrees {same_halt} | max |d grad| {d_grad:.3g}")
        worst = max(worst, abs(ref_loss - loss.item()), d_logits, d_grad, 0.0 if same_halt else 1.0)
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="checkout of github.com/locuslab/EqR")
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.ref, "models", "eqr.py")):
        sys.exit(f"error: {args.ref}: not a checkout of the reference (models/eqr.py missing)")
    ref_model, ref_losses = import_reference(os.path.abspath(args.ref))
    sys.path.insert(0, ROOT)
    worst = 0.0
    for dtype in ("float32", "bfloat16"):
        for name, (seq_len, vocab, overrides) in CASES.items():
            print(f"{name} {dtype}")
            worst = max(worst, run_case(ref_model, ref_losses, seq_len, vocab, overrides, dtype))
    print("identical" if worst == 0 else f"largest difference {worst:.3g}")
    sys.exit(0 if worst == 0 else 1)


if __name__ == "__main__":
    main()
