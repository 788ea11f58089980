"""When a trajectory halts: the authors' rule (their models/trm.py), used by training and evaluation alike.

After each supervision step (steps = how many the trajectory has run, from 1):
    signal  = q_halt > halt_threshold                    (no continue head: every preset, no_ACT_continue=true)
            = q_halt > q_continue + halt_threshold       (a model trained with a continue head)
    counter = counter + 1 where signal, else 0 (consecutive) or unchanged (cumulative)
    fired   = signal                                     when halt_confirm_steps == 0
            = counter >= 1 + halt_confirm_steps          otherwise (so 1 + k signals confirm)
    halted  = steps >= halt_max_steps  or  (fired and steps >= min_steps)
At the step cap a trajectory always halts. The counter is updated before the minimum is applied, so
signals given before min_steps still count towards the confirmation.
Training draws min_steps per row and step (exploration, models/eqr.py); evaluation uses the rule's
fixed `min_steps` (the authors' act_inference also draws the exploration minimum at evaluation time;
docs/evaluation.md says how to get theirs exactly).

Every function is elementwise on tensors that broadcast, so one call evaluates many rules at once.
"""
from dataclasses import asdict, dataclass

import torch

from utils.typecheck import at_least, check_fields, must

CONFIRM_MODES = {"consecutive": "consecutive", "cumulative": "cumulative", "accumulate": "cumulative",
                 "total": "cumulative"}  # the authors also read these two spellings as cumulative


def signal(q_halt: torch.Tensor, q_continue: torch.Tensor | None, threshold) -> torch.Tensor:
    """The halting head's vote this step (q_continue None: the model has no continue head)."""
    return q_halt > threshold if q_continue is None else q_halt > q_continue + threshold


def count(counter: torch.Tensor, vote: torch.Tensor, cumulative) -> torch.Tensor:
    """Signals so far: consecutive ones (a step without a signal resets), or all of them (cumulative)."""
    return torch.where(vote, counter + 1, torch.where(torch.as_tensor(cumulative, device=counter.device), counter, 0))


def fired(counter: torch.Tensor, vote: torch.Tensor, confirm_steps) -> torch.Tensor:
    """Whether the rule asks to stop: this step's signal, or 1 + confirm_steps signals counted."""
    confirm = torch.as_tensor(confirm_steps, device=counter.device)
    return torch.where(confirm > 0, counter >= 1 + confirm, vote)


def halts(fire: torch.Tensor, steps: torch.Tensor, max_steps, min_steps) -> torch.Tensor:
    """Whether a trajectory stops after this step: at the cap always, else when fired past the minimum."""
    return (steps >= max_steps) | (fire & (steps >= min_steps))


@dataclass(frozen=True)
class HaltRule:
    """One halting rule at evaluation: the authors' keys plus a fixed minimum number of steps."""
    threshold: float = must(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number", 0.0)
    confirm_steps: int = at_least(0, 0)
    confirm_mode: str = must(lambda v: str(v).lower() in CONFIRM_MODES, "consecutive or cumulative", "consecutive")
    min_steps: int = at_least(1, 1)

    def __post_init__(self):
        check_fields(self, prefix="halt_", typed=False)
        object.__setattr__(self, "threshold", float(self.threshold))
        # Without confirmation steps the mode changes nothing (the signal alone decides): one spelling.
        mode = CONFIRM_MODES[str(self.confirm_mode).lower()] if self.confirm_steps else "consecutive"
        object.__setattr__(self, "confirm_mode", mode)

    @property
    def label(self) -> str:
        """Short text for tables and plots: 'q>0', 'q>0.5 x3 cum', 'q>0 min4'."""
        text = f"q>{self.threshold:g}"
        if self.confirm_steps:
            text += f" x{1 + self.confirm_steps}" + (" cum" if self.confirm_mode == "cumulative" else "")
        return text + (f" min{self.min_steps}" if self.min_steps > 1 else "")

    def to_dict(self) -> dict:
        return asdict(self)


def stack(rules, device) -> dict:
    """Several rules as [R, 1] tensors, for the functions above to decide all of them in one call."""
    column = lambda values, dtype: torch.tensor(values, dtype=dtype, device=device)[:, None]
    return {"threshold": column([r.threshold for r in rules], torch.float32),
            "confirm_steps": column([r.confirm_steps for r in rules], torch.int32),
            "cumulative": column([r.confirm_mode == "cumulative" for r in rules], torch.bool),
            "min_steps": column([r.min_steps for r in rules], torch.int32)}


def step(rules: dict, counter: torch.Tensor, q_halt: torch.Tensor, q_continue: torch.Tensor | None,
         steps: torch.Tensor, max_steps) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of every rule (stack(...)) for every row -> (counter [R, rows], halted [R, rows])."""
    vote = signal(q_halt[None], None if q_continue is None else q_continue[None], rules["threshold"])
    counter = count(counter, vote, rules["cumulative"])
    return counter, halts(fired(counter, vote, rules["confirm_steps"]), steps[None], max_steps, rules["min_steps"])


def rules_from(thresholds, confirm_steps, confirm_modes, min_steps) -> tuple[HaltRule, ...]:
    """The rules of a sweep: each key a value or a list; lists of length > 1 are crossed (threshold slowest)."""
    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else [v]
    rules = [HaltRule(t, c, m, n) for t in as_list(thresholds) for c in as_list(confirm_steps)
             for m in as_list(confirm_modes) for n in as_list(min_steps)]
    return tuple(dict.fromkeys(rules))  # the same rule twice (e.g. both modes without confirmation): once
