"""The authors' spellings (github locuslab/EqR) that pretrain.py and evaluate.py accept: the one table of them.

- `+key=value` sets a key whether or not the config already has one (their configs lack max_steps,
  run_name, wandb_mode, so their users write `+max_steps=...`); a key that is then unknown is refused by
  the entry point like any other.
- An alias is renamed to our key (`dataset_data_path` -> `data_path`).
- A key of their configs with no counterpart here is dropped with a one-line notice of what it does
  here, or refused in one line where its value asks for something this code does not do.
The keys by kind, and the authors' commands that work here: docs/reference_notes.md, "Their commands here".
"""
import json
import os
import sys

from utils.errors import ConfigError

CONFIG_GROUPS = ("arch", "dataset", "eval", "train")  # `+arch=trm` adds a group option; it is left to Hydra

ALIASES = {
    "train": {},
    "eval": {"dataset_data_path": "data_path", "eval_config": "eval_yaml"},
}

ANY = None  # every value is accepted
_NOT_LOGGED = "does nothing here (it sets what the authors log to W&B)"
_NO_LOAD = "does nothing here (load_checkpoint is not supported)"
_IN_JOB = "does nothing here (evaluation runs inside the training job)"
_EVAL_ONLY = "does nothing here (evaluation during training is B = 1; evaluate.py takes this key)"
_NO_WANDB = "does nothing here (evaluation does not log to W&B)"
_ALL_RULES = "does nothing here (every rule is always reported, docs/evaluation.md)"
_TRAINING = "does nothing here (a training key; the authors' evaluator takes and ignores it too)"

# entry point -> {their key: (what it does here, the values accepted, or ANY)}
INERT = {
    "train": {
        "train_epochs_per_iter": ("does nothing here (the run evaluates every eval_interval_steps)", ANY),
        "heavy_metrics_log_interval": (_NOT_LOGGED, ANY),
        "steps_hist_log_interval_steps": (_NOT_LOGGED, ANY),
        "steps_hist_plotly": (_NOT_LOGGED, ANY),
        "grad_norm_log_interval_steps": (_NOT_LOGGED, ANY),
        "hidden_state_log_interval_steps": (_NOT_LOGGED, ANY),
        "entity": ("does nothing here (W&B takes the entity from WANDB_ENTITY)", ANY),
        "target_q_update_every": ("does nothing here (no model of theirs takes a target Q either)", ANY),
        "gradient_accumulation_steps": ("does nothing here (the authors' loop does not read it either)", ANY),
        "grad_clip_norm": ("does nothing here (the authors' loop does not read it either)", ANY),
        "gradient_checkpoint": ("does nothing here (activations are kept for the backward pass)", ANY),
        "retain_graph": ("does nothing here (each step's graph is freed after its backward pass)", ANY),
        "debug": ("does nothing here", ANY),
        "debug_trace_steps": ("does nothing here", ANY),
        "load_checkpoint": ("works here only as null (to continue a run: run_name=NAME resume=true)", (None,)),
        "load_weights_only": (_NO_LOAD, ANY),
        "load_strict": (_NO_LOAD, ANY),
        "optimizer_kwargs": ("works here only as {} (set lr, beta1, beta2, weight_decay as keys)", ({},)),
        "eval_sync_max_wait_time": (_IN_JOB, ANY),
        "eval_sync_poll_interval": (_IN_JOB, ANY),
        "eval_sync_status_log_interval": (_IN_JOB, ANY),
        "eval_description": ("does nothing here", ANY),
        "eval_dir": ("does nothing here (evaluation metrics go to the run's metrics.jsonl)", ANY),
        "eval_save_outputs": ("does nothing here (evaluation during training saves no predictions)", ANY),
        "convergence_window": (_EVAL_ONLY, ANY),
        "convergence_top_k": (_EVAL_ONLY, ANY),
        "convergence_vis_plots": (_EVAL_ONLY, ANY),
        "arch.H_layers": ("does nothing here (it builds no layer in the authors' model either)", ANY),
        "dataset.evaluators": ("works here only as [] (no extra evaluators, as in all their presets)", ([],)),
    },
    "eval": {
        "suffix": ("does nothing here (results go to output_dir, default eval_results/<checkpoint>_<time>/)", ANY),
        "force_rerun": ("does nothing here (every run writes a new output_dir; resume=true continues one)", ANY),
        "report_conv_acc_stats": (_ALL_RULES, ANY),
        "enable_different_init_core_metrics": (_ALL_RULES, ANY),
        "wandb_run_name": (_NO_WANDB, ANY),
        "name": (_NO_WANDB, ANY),
        "wandb_tags": (_NO_WANDB, ANY),
        "description": (_NO_WANDB, ANY),
        "checkpoint_list": ("works here only as [] (one checkpoint per run: checkpoint=PATH)", ([],)),
        "load_strict": ("does nothing here (every checkpoint is read strictly)", ANY),
        "loss_head_name": ("does nothing here (the evaluator runs the model itself)", ANY),
        "top_k": ("does nothing here (the authors' evaluate.py does not read it either; see convergence_top_k)", ANY),
        "convergence_vis_plots": ("does nothing here (plots=true writes this repository's plots)", ANY),
        # Their evaluator takes any key (extra="allow"), so their training keys too; ours that the evaluator has
        # (seed, global_batch_size, resume, convergence_*) keep their meaning here.
        "wandb_mode": (_NO_WANDB, ANY),
        **{key: (_TRAINING, ANY) for key in (
            "arch", "dataset", "optimizer_kwargs", "epochs", "lr", "lr_min_ratio", "lr_warmup_steps",
            "gradient_accumulation_steps", "weight_decay", "beta1", "beta2", "grad_clip_norm", "target_q_update_every",
            "project_name", "entity", "run_name", "checkpoint_path", "load_checkpoint", "load_weights_only",
            "train_epochs_per_iter", "eval_interval_steps", "eval_save_outputs", "heavy_metrics_log_interval",
            "steps_hist_log_interval_steps", "steps_hist_plotly", "checkpoint_interval_steps", "max_steps", "ema",
            "ema_rate", "debug", "debug_trace_steps", "grad_norm_log_interval_steps", "hidden_state_log_interval_steps",
            "gradient_checkpoint", "retain_graph", "eval_sync_max_wait_time", "eval_sync_poll_interval",
            "eval_sync_status_log_interval", "eval_description", "eval_dir")},
    },
}
SWEEPS = ("param_iter", "shared_param_iter")  # evaluation: {arch.halt_max_steps: D or [D, ...]} is the depth


def their_keys(entry: str) -> set[str]:
    """Top-level keys of the authors' configs that `entry` takes besides its own (aliases aside)."""
    return {key for key in INERT[entry] if "." not in key} | (set(SWEEPS) if entry == "eval" else set())


def typed_keys(entry: str, overrides: list[str]) -> set[str]:
    """The keys set on the command line, in our spelling (`+max_steps=1` -> max_steps, `dataset_data_path` ->
    data_path), dotted for nested ones: notices are for these only, not for keys of a yaml the user did not write."""
    keys = set()
    for override in overrides:
        key, eq, _ = override.partition("=")
        if eq and not key.startswith("~"):
            key = key.lstrip("+")
            keys.add(ALIASES.get(entry, {}).get(key, key))
    return keys


def rewrite_overrides(entry: str, overrides: list[str]) -> list[str]:
    """Hydra overrides with the authors' spellings made ours: aliases renamed, and `+key` and their keys
    turned into `++key` (set, whether or not the config has the key)."""
    rewritten = []
    for override in overrides:
        key, eq, value = override.partition("=")
        if not eq or key.startswith("~"):
            rewritten.append(override)
            continue
        plus = len(key) - len(key.lstrip("+"))
        name = ALIASES[entry].get(key[plus:], key[plus:])
        force = (plus and name not in CONFIG_GROUPS) or name in INERT[entry] or name.split(".")[0] in their_keys(entry)
        rewritten.append(f"{'++' if force else '+' * plus}{name}={value}")
    return rewritten


def apply_reference_keys(entry: str, cfg: dict, typed: set[str] | None = None) -> dict:
    """Drop or refuse the authors' keys in a composed, resolved config; map their sweeps. What a key does here is
    said in one notice where the user typed it (`typed`, from typed_keys; None: every key), not for a yaml's."""
    def said(key: str) -> bool:
        return typed is None or any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in typed)

    for key, (meaning, accepted) in INERT[entry].items():
        parent, _, leaf = key.rpartition(".")
        node = cfg.get(parent) if parent else cfg
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node.pop(leaf)
        text = f"{key}={json.dumps(value, default=str)} (the authors' key) {meaning}"
        if accepted is not ANY and value not in accepted:
            raise ConfigError(text)
        if said(key):
            notice(text)
    if entry == "eval":
        _apply_sweeps(cfg, said)
        if "convergence_top_k" in cfg and cfg["convergence_top_k"] is None:
            cfg["convergence_top_k"] = 1
            if said("convergence_top_k"):
                notice("convergence_top_k: null (the authors' 'no top-k curve') is 1 here; "
                       "top-1 by convergence is always reported at B > 1")
    return cfg


def _apply_sweeps(cfg: dict, said) -> None:
    """The authors' `param_iter: {arch.halt_max_steps: ...}`: a depth, or a list of depths (one pass here)."""
    for key in SWEEPS:
        for name, value in _flatten(cfg.pop(key, None) or {}).items():
            if name.replace("/", ".") != "arch.halt_max_steps":
                raise ConfigError(f"{key}.{name}: only arch.halt_max_steps can be swept here "
                                  f"(use depths=[...] and breadths=[...])")
            if isinstance(value, list):
                cfg["depths"], cfg["halt_max_steps"] = value, None  # null: max(depths)
                if said(key):
                    notice(f"{key}.{name}={value} is depths={value} here, evaluated in one pass")
            elif value != cfg.get("halt_max_steps"):
                cfg["halt_max_steps"] = value
                if said(key):
                    notice(f"{key}.{name}={value} sets halt_max_steps={value}")


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def notice(message: str) -> None:
    """One line on stderr, from the first process only (every rank composes the config)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"notice: {message}", file=sys.stderr)
