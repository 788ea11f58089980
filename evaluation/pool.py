"""The elastic evaluator: a fixed pool of trajectory slots, refilled as halting rules stop trajectories.

Every step runs the model on all `pool_size` slots at once (static shapes). After the step each halting
rule (models/halting.py, the grid's spec.halting_rules) decides for every busy slot; a rule that halts a
trajectory records its answer, and the trajectory leaves its slot once every rule has decided (at the
latest at the depth cap spec.max_depth). A free slot takes the next trajectory of the loader's batches at
once, from its fresh initial state. So compute follows the halting rules instead of the depth cap.

Same answers as the one-pass grid: a trajectory's randomness is keyed by (seed, puzzle, trajectory)
(evaluation/keyed_rng.py; KeyedSampler.rekey when a slot is refilled), so each trajectory computes what
the grid's row for it computes, and each batch's counts are made by the grid's own tally once all its
trajectories have left. Batches are handed back in loader order, so a partial result (evaluate.py) covers
a prefix of the batches exactly as the grid's does. Padding rows and unlabelled puzzles are not run.
"""
from collections import deque

import torch

from evaluation.grid import GridSpec, batch_rows, row_keys, row_views, tally
from models import halting


class _Pending:
    """One loader batch in flight: its rows' keys and labels, each rule's answers so far, rows still out."""

    def __init__(self, index: int, batch: dict, spec: GridSpec, rules: int, seq_len: int):
        self.index, self.batch = index, batch
        (self.inputs, self.labels, self.labelled, self.n_labels), self.real, self.puzzle_labels = batch_rows(spec, batch)
        self.puzzles, self.trajectories = row_keys(spec, batch["index"])
        L, rows = batch["inputs"].shape[0], self.inputs.shape[0]
        self.fresh = torch.arange(rows, device=self.inputs.device) < L * spec.max_breadth
        real_rows = self.real.repeat_interleave(spec.max_breadth)
        if spec.fixed_row:
            real_rows = torch.cat([real_rows, self.real])
        self.todo = real_rows.nonzero().flatten()  # the rows to run, in row order
        self.next = 0
        device = self.inputs.device
        self.answers = {"h_tokens": torch.zeros(rules, rows, dtype=torch.long, device=device),
                        "h_steps": torch.zeros(rules, rows, dtype=torch.long, device=device),
                        "h_preds": torch.zeros(rules, rows, seq_len, dtype=torch.long, device=device)}
        self.out = len(self.todo)  # trajectories not yet finished

    def counts(self, spec: GridSpec):
        now = dict(self.answers, h_exact=self.answers["h_tokens"] == self.n_labels)
        view, fixed_view = row_views(spec, self.batch["inputs"].shape[0])
        cells, hist = tally(spec, self.real, self.puzzle_labels, spec.max_depth, now, view, fixed_view)
        return cells[None], hist[None]


@torch.inference_mode()
def elastic_batches(inner, batches, spec: GridSpec, pool_size: int, sampler, stats: dict | None = None):
    """Run the halting rules of `spec` (spec.elastic) over `batches` ((batch_index, batch) on the device,
    in order) with `pool_size` slots -> yields (batch_index, batch, cells, hist) per batch, in order, with
    the grid's count layout (spec.cell_shape, spec.hist_shape). sampler: a KeyedSampler over pool_size rows
    (rekeyed per trajectory) or the torch sampler. stats, if given, gets the pool's step and row counts."""
    config = inner.config
    R = len(spec.halting_rules)
    rules = None
    source, pending, done = iter(batches), deque(), False
    S, H = config.seq_len, config.hidden_size
    stats = {} if stats is None else stats
    stats.update(steps=0, slot_steps=0, busy_steps=0)
    z_H = z_L = None
    while True:
        # Fill the free slots with the next trajectories, loading batches as needed.
        if z_H is not None:
            free = (~active).nonzero().flatten()
        while not done and (z_H is None or len(free)):
            if not pending or pending[-1].next == len(pending[-1].todo):
                item = next(source, None)
                if item is None:
                    done = True
                    break
                entry = _Pending(*item, spec, R, S)
                pending.append(entry)
                if z_H is None:  # the first batch sets the device and dtypes
                    device = entry.inputs.device
                    rules = halting.stack(spec.halting_rules, device)
                    z_H = torch.zeros(pool_size, config.latent_len, H, dtype=config.dtype, device=device)
                    z_L = torch.zeros_like(z_H)
                    inputs = torch.zeros(pool_size, S, dtype=entry.inputs.dtype, device=device)
                    labels = torch.zeros(pool_size, S, dtype=entry.labels.dtype, device=device)
                    labelled = torch.zeros(pool_size, S, dtype=torch.bool, device=device)
                    steps = torch.zeros(pool_size, dtype=torch.int32, device=device)
                    counter = torch.zeros(R, pool_size, dtype=torch.int32, device=device)
                    decided = torch.ones(R, pool_size, dtype=torch.bool, device=device)
                    active = torch.zeros(pool_size, dtype=torch.bool, device=device)
                    owner = torch.zeros(pool_size, dtype=torch.long, device=device)  # the batch index of each slot
                    row = torch.zeros(pool_size, dtype=torch.long, device=device)  # its row in that batch
                    free = torch.arange(pool_size, device=device)
                continue
            entry = pending[-1]
            take = entry.todo[entry.next:entry.next + len(free)]
            slots, free = free[:len(take)], free[len(take):]
            entry.next += len(take)
            inputs[slots], labels[slots], labelled[slots] = entry.inputs[take], entry.labels[take], entry.labelled[take]
            steps[slots], counter[:, slots], decided[:, slots], active[slots] = 0, 0, False, True
            owner[slots], row[slots] = entry.index, take
            if hasattr(sampler, "rekey"):
                sampler.rekey(slots, entry.puzzles[take], entry.trajectories[take])
            fresh = torch.zeros(pool_size, dtype=torch.bool, device=device)
            fresh[slots] = entry.fresh[take]
            fixed = torch.zeros_like(fresh)
            fixed[slots] = ~entry.fresh[take]
            if fresh.any():
                inner.reset_latents(z_H, z_L, fresh, sampler,
                                    fresh_std=spec.fresh_init_std if spec.max_breadth > 1 else None)
            if fixed.any():
                inner.reset_latents(z_H, z_L, fixed, sampler)

        # Hand back, in order, the batches whose trajectories have all finished.
        while pending and pending[0].out == 0 and (pending[0].next == len(pending[0].todo)):
            entry = pending.popleft()
            yield (entry.index, entry.batch, *entry.counts(spec))
        if z_H is None or not active.any():
            if done and not pending:
                return
            continue

        # One supervision step on every slot; each rule decides for the busy ones.
        z_H, z_L, logits, q = inner(z_H, z_L, inputs, sampler)
        steps += 1
        stats["steps"] += 1
        stats["slot_steps"] += pool_size
        stats["busy_steps"] += int(active.sum())
        preds = logits.argmax(-1)
        tokens = ((preds == labels) & labelled).sum(-1)
        counter, stop = halting.step(rules, counter, q, inner.q_continue(z_H), steps, spec.max_depth)
        stop &= ~decided & active
        which, slot = stop.nonzero(as_tuple=True)
        for index in owner[slot].unique().tolist():
            entry = next(e for e in pending if e.index == index)
            mine = owner[slot] == index
            r, s = which[mine], slot[mine]
            entry.answers["h_tokens"][r, row[s]] = tokens[s]
            entry.answers["h_steps"][r, row[s]] = steps[s].long()
            entry.answers["h_preds"][r, row[s]] = preds[s]
        decided |= stop
        leaving = active & decided.all(0)
        for index in owner[leaving].unique().tolist():
            entry = next(e for e in pending if e.index == index)
            entry.out -= int((owner[leaving] == index).sum())
        active &= ~leaving
