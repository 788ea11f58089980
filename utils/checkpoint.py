"""Checkpoint files: every checkpoint is written and read here (training, resume, evaluation, shipping).

Our format is FORMAT, the `format` key of each file; a file of a version not in READABLE is refused on
read (a file without the key is one of the authors'). A training run's folder (checkpoints/<project>/<run>/
or checkpoint_path; its config.yaml and metrics.jsonl are utils/run_folder.py's) holds:

    step_<N>.pt           rank 0's checkpoint after N optimizer steps, a dict:
        format            FORMAT
        step              N
        world_size        how many processes wrote it; a resume needs as many
        config            the resolved training config; config["arch"] holds every ModelConfig field, seq_len
                          and vocab_size included, so the file rebuilds its own model
        model             state dict of the ACT loss head (names "model.inner.*"), float32
        optimizer         the optimizer's state dict
        carry             Carry.to_dict() of this rank's rows, on the CPU
        rng               this rank's torch, numpy and python (and cuda) generator states
        loader            this rank's TrainLoader position
        ema               {"rate": float, "shadow": {name: tensor}} when EMA is on
    step_<N>.rank<r>.pt   rank r's shard (with several processes): format, step, rank, carry, rng, loader
    latest                "step_<N>.pt": the newest step whose every shard is on disk

Only tensors and plain types, so every file loads with torch.load(weights_only=True). Each file is written to
a temp file and renamed (utils/files.py), so it is whole or absent. `latest` moves only once every rank's shard
is written; then the steps older than it beyond checkpoint_keep are deleted. A resume first checks each
shard (every CRC of its zip, a pickle naming nothing but tensors) and falls back from a damaged `latest` to
the newest intact step. A shipped checkpoint (checkpoints/shipped/, write_slim) keeps SLIM_KEYS only.

The authors' files, read for evaluation by read_model_file (models/checkpoint.py builds their model):
- EqR / TRM `.pth` (eqr.pth in the Hub repo locuslab/EqR-model): the same `model` names, possibly with
  `_orig_mod.` segments, `ema` = {"mu", "shadow"}, a config["arch"] without seq_len and vocab_size, numpy
  RNG state and a pickled carry dataclass of their modules. They are read with RestrictedUnpickler: tensors,
  plain containers, numpy arrays and those state records (as SimpleNamespace), nothing else.
- The official TRM's and HRM's `step_N` or `checkpoint` (github SamsungSAILMontreal/TinyRecursiveModels,
  sapientinc/HRM): a bare state dict of the compiled loss head ("_orig_mod.model.inner.*"), the training
  config in all_config.yaml beside it; with EMA on, the file holds the EMA weights (write_official makes one).
- Any of these as hf://OWNER/REPO[@REVISION]/path/in/repo, fetched by utils/hub.py (all_config.yaml beside it).
"""
import codecs
import os
import pickle
import random
import re
import sys
import types
import zipfile
from collections import OrderedDict

import numpy as np
import torch
import torch.distributed as dist
import yaml

from utils.errors import CheckpointError, first_line
from utils.files import atomic_save, atomic_write
from utils.hub import HF_SCHEME, resolve_checkpoint_path

FORMAT = "eqr/1"
READABLE = (FORMAT,)  # when FORMAT changes, the old version stays here as long as this code can read it
SHARD_NAME = re.compile(r"step_(\d+)(\.rank\d+)?\.pt")  # shard_name's files
SLIM_KEYS = ("format", "step", "config", "model", "ema")  # what a shipped checkpoint keeps: enough to evaluate
OFFICIAL_CONFIG = "all_config.yaml"


# ----------------------------------------------------------------------------- the run folder's checkpoints

def shard_name(step: int, rank: int) -> str:
    return f"step_{step}.pt" if rank == 0 else f"step_{step}.rank{rank}.pt"


def _rank0_step(name: str) -> int | None:
    """N for a file name step_<N>.pt, else None."""
    match = SHARD_NAME.fullmatch(name)
    return int(match[1]) if match and not match[2] else None


def point_latest(run_dir: str, step: int) -> None:
    """Make step the one to resume from; call only once every rank's shard of it is written."""
    atomic_write(os.path.join(run_dir, "latest"), shard_name(step, 0) + "\n")


def latest_checkpoint(run_dir: str) -> str | None:
    pointer = os.path.join(run_dir, "latest")
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        name = f.read().strip()
    path = os.path.join(run_dir, name)
    if _rank0_step(name) is None or not os.path.isfile(path):
        raise CheckpointError(f"{pointer}: points to {name!r}, which is not a checkpoint file in {run_dir}")
    return path


def latest_step(run_dir: str) -> int | None:
    path = latest_checkpoint(run_dir)
    return None if path is None else _rank0_step(os.path.basename(path))


def prune_checkpoints(run_dir: str, keep: int | None) -> list[str]:
    """Delete the shards of all but the newest `keep` steps up to the one `latest` names (None: keep all); call
    only after `latest` has moved. Only this folder's step files are touched, never those of `latest`'s step or of
    a step past it, so a kill part-way leaves extra old files (the next save removes them) and loses nothing.
    Returns the paths deleted."""
    newest = latest_step(run_dir)
    if keep is None or newest is None:
        return []
    shards = {name: int(match.group(1)) for name in os.listdir(run_dir) if (match := SHARD_NAME.fullmatch(name))}
    older = sorted({step for step in shards.values() if step < newest})
    doomed = set(older[:max(len(older) - (keep - 1), 0)])
    deleted = [os.path.join(run_dir, name) for name, step in sorted(shards.items()) if step in doomed]
    for path in deleted:
        os.remove(path)
    return deleted


def checkpoint_global(name: str) -> bool:
    """Whether a checkpoint of this format may name `name` in its pickle: tensors and their storages only."""
    module, _, attr = name.rpartition(".")
    return (name == "collections.OrderedDict" or (module == "torch._utils" and attr.startswith("_rebuild_"))
            or (module == "torch" and attr.endswith("Storage")))


class _Stub:
    """Stands for every object a scanned pickle builds, so that scanning runs no code the pickle names."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Stub()

    def __setitem__(self, key, value):
        pass

    def __setstate__(self, state):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _Scanner(pickle.Unpickler):
    """Follows a pickle without building anything: a global that is not checkpoint_global's raises RefusedGlobal."""

    def find_class(self, module, name):
        if not checkpoint_global(f"{module}.{name}"):
            raise RefusedGlobal(f"{module}.{name}")
        return _Stub

    def persistent_load(self, pid):
        return _Stub()


def check_archive(path: str) -> None:
    """Verify every CRC of a file in torch's zip format (torch.load checks none of them)."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line(e)}); is the file complete?") from None
    if damaged:
        raise CheckpointError(f"{path}: corrupt checkpoint (checksum mismatch in {damaged})")


def check_shard(path: str) -> None:
    """A shard that resume may load: every CRC right, and a pickle that names nothing but tensors (scanned, so
    nothing it names is imported or run)."""
    check_archive(path)
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            if name is not None:
                with archive.open(name) as f:
                    _Scanner(f).load()
    except RefusedGlobal as e:
        raise CheckpointError(f"{path}: refused to unpickle {e} (a checkpoint holds tensors and plain "
                              f"types only); not loaded") from None
    except Exception:  # a pickle the scan cannot follow; the loader that reads it decides
        pass


def intact_checkpoint(run_dir: str, latest: str, world_size: int, rank: int) -> str:
    """`latest`, or, when one of its shards is damaged, missing or refused (check_shard), the newest older step
    whose every shard passes check_shard (with a warning); none intact is an error."""
    newest = _rank0_step(os.path.basename(latest))
    steps = sorted({s for name in os.listdir(run_dir) if (s := _rank0_step(name)) is not None and s <= newest}, reverse=True)
    problem = None
    for step in steps:
        try:
            for r in range(world_size):
                check_shard(os.path.join(run_dir, shard_name(step, r)))
        except CheckpointError as e:
            problem = problem or str(e)
            continue
        if step != newest and rank == 0:
            print(f"warning: {problem}; resuming from the newest intact checkpoint, {shard_name(step, 0)}", file=sys.stderr)
        return os.path.join(run_dir, shard_name(step, 0))
    raise CheckpointError(f"{run_dir}: no intact checkpoint to resume ({problem})")


# ----------------------------------------------------------------------------- training: save and resume

def rng_state(device: torch.device) -> dict:
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_cached)},
        "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if device.type == "cuda":
        if "cuda" not in state:
            raise CheckpointError("checkpoint has no CUDA RNG state (it was written by a CPU run)")
        torch.cuda.set_rng_state(state["cuda"], device)


def _on_cpu(tree):
    if isinstance(tree, dict):
        return {k: _on_cpu(v) for k, v in tree.items()}
    return tree.cpu() if isinstance(tree, torch.Tensor) else tree


def save_checkpoint(run_dir, step, cfg, head, ema, optimizer, carry, loader, device, rank, world_size) -> None:
    """Each rank writes its own carry/RNG/loader shard; rank 0's file also holds the weights.
    `latest` moves only when every shard of the step is on disk; older steps beyond checkpoint_keep go after that."""
    own = {"carry": None if carry is None else _on_cpu(carry.to_dict()), "rng": rng_state(device),
           "loader": loader.state_dict()}
    if rank == 0:
        ckpt = {"format": FORMAT, "step": step, "world_size": world_size, "config": cfg,
                "model": head.state_dict(), "optimizer": optimizer.state_dict(), **own}
        if ema is not None:
            ckpt["ema"] = ema.state_dict()
    else:
        ckpt = {"format": FORMAT, "step": step, "rank": rank, **own}
    atomic_save(ckpt, os.path.join(run_dir, shard_name(step, rank)))
    if world_size > 1:
        dist.barrier()
    if rank == 0:
        point_latest(run_dir, step)
        prune_checkpoints(run_dir, cfg["checkpoint_keep"])


def load_checkpoint(path, cfg, head, ema, optimizer, loader, device, rank, world_size):
    """Restores weights, EMA, optimizer and this rank's loader position; returns (step, carry dict, rng state)."""
    ckpt = read_run_checkpoint(path)
    if ckpt["world_size"] != world_size:
        raise CheckpointError(f"{path}: written by {ckpt['world_size']} processes, resumed with {world_size}; use the same count")
    for key in ("global_batch_size", "seed", "data_path"):
        if ckpt["config"][key] != cfg[key]:
            raise CheckpointError(f"{path}: {key} was {ckpt['config'][key]!r}, now {cfg[key]!r}; resume with the same value")
    for key, value in cfg["arch"].items():
        if ckpt["config"]["arch"].get(key) != value:
            raise CheckpointError(f"{path}: arch.{key} was {ckpt['config']['arch'].get(key)!r}, now {value!r}")
    shadow = ckpt["ema"].get("shadow") if isinstance(ckpt.get("ema"), dict) else None
    if ema is not None and not isinstance(shadow, dict):
        raise CheckpointError(f"{path}: has no EMA weights but ema=true")
    check_fits(path, head, ckpt["model"], None)  # one line naming a tensor that does not fit its config
    if ema is not None:
        check_fits(path, head, {**ckpt["model"], **shadow}, set(shadow))
    head.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if ema is not None:
        ema.load_state_dict(ckpt["ema"])
    own = ckpt if rank == 0 else read_run_checkpoint(os.path.join(os.path.dirname(path), shard_name(ckpt["step"], rank)))
    loader.load_state_dict(own["loader"])
    return ckpt["step"], own["carry"], own["rng"]


def check_fits(path: str, model: torch.nn.Module, weights: dict, shadow_names: set | None) -> None:
    """One line naming the first parameter whose name or shape does not fit the architecture."""
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in weights:
            raise CheckpointError(f"{path}: missing parameter {name}, which the architecture needs")
        if not isinstance(weights[name], torch.Tensor):
            raise CheckpointError(f"{path}: {name} is a {type(weights[name]).__name__}, expected a tensor")
        if weights[name].shape != tensor.shape:
            raise CheckpointError(f"{path}: parameter {name} has shape {tuple(weights[name].shape)}, "
                                  f"architecture expects {tuple(tensor.shape)}")
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise CheckpointError(f"{path}: parameter {extra[0]} is not in the architecture")
    if shadow_names is not None:
        untracked = sorted(n for n, p in model.named_parameters()
                           if n not in shadow_names and not getattr(p, "sign_sgd", False))
        if untracked:
            raise CheckpointError(f"{path}: ema.shadow lacks parameter {untracked[0]}")


def write_slim(source: str, dest: str) -> dict:
    """Ship a run's checkpoint: a copy with SLIM_KEYS only (no optimizer, carry, RNG or loader state)."""
    ckpt = read_run_checkpoint(source)
    slim = {key: ckpt[key] for key in SLIM_KEYS if key in ckpt}
    atomic_save(slim, dest)
    return slim


# ----------------------------------------------------------------------------- reading any checkpoint

def _allowed_globals() -> dict:
    allowed = {
        ("collections", "OrderedDict"): OrderedDict,
        **{("builtins", t.__name__): t for t in (set, frozenset, bytearray, complex)},
        ("_codecs", "encode"): codecs.encode,  # how protocol 2 stores bytes
        **{("torch", t.__name__): t for t in (torch.Size, torch.device, torch.Tensor)},
        ("torch._tensor", "Tensor"): torch.Tensor,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
        ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    }
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                 "_rebuild_parameter_with_state"):
        if hasattr(torch._utils, name):
            allowed[("torch._utils", name)] = getattr(torch._utils, name)
    for name in dir(torch):  # dtypes pickle as module attributes: torch.float32, torch.bfloat16, ...
        if isinstance(getattr(torch, name, None), torch.dtype):
            allowed[("torch", name)] = getattr(torch, name)
    # numpy arrays, scalars and dtypes as plain data (numpy 1.x files say numpy.core, 2.x numpy._core)
    reconstruct, scalar = np.empty(0).__reduce__()[0], np.float64(0).__reduce__()[0]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    # The authors' training state records (the ACT carry); kept as attribute bags, never imported.
    for module in ("models.eqr", "models.trm"):
        for name in ("ModelCarry", "LatentCarry"):
            allowed[(module, name)] = types.SimpleNamespace
    return allowed


ALLOWED_GLOBALS = _allowed_globals()


class RefusedGlobal(pickle.UnpicklingError):
    """A global (class or function) the checkpoint's pickle asks for that is not on the allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only ALLOWED_GLOBALS; any other global raises RefusedGlobal."""

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None


# torch.load(pickle_module=...) wants a module with `Unpickler` and `load`.
restricted_pickle = types.ModuleType("restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.load = lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load()


def read_checkpoint(path: str, trust_checkpoint: bool = False, ours: bool = False) -> tuple[dict, str]:
    """Load a checkpoint dict onto the CPU -> (dict, how it was read).

    Tried in order: torch's weights_only loader (our own files; with `ours`, the only one), then
    RestrictedUnpickler (the authors' files); `trust_checkpoint` skips both for a plain, unrestricted torch.load.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file (the authors' checkpoints: bash scripts/download_artifacts.sh "
                              f"--ckpts-only, into downloaded_checkpoints/, or checkpoint=hf://locuslab/EqR-model/...; "
                              f"a run's: checkpoints/<project>/<run>/step_<N>.pt)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK\x03\x04"):
        check_archive(path)
    elif not magic.startswith(b"\x80"):  # nor a (legacy torch) pickle
        raise CheckpointError(f"{path}: not a torch checkpoint (neither a zip archive nor a pickle)")
    attempts = [("weights_only", dict(weights_only=True))]
    if trust_checkpoint:
        attempts = [("trusted", dict(weights_only=False))]
    elif not ours:
        attempts.append(("restricted", dict(weights_only=False, pickle_module=restricted_pickle)))
    for how, kwargs in attempts:
        try:
            obj = torch.load(path, map_location="cpu", **kwargs)
            break
        except RefusedGlobal as e:
            raise CheckpointError(
                f"{path}: refused to unpickle {e} (not a tensor, plain type or known training state); "
                f"pass trust_checkpoint=true only if you trust this file") from None
        except Exception as e:
            error = e
    else:
        reason = first_line(error).split(". ")[0]  # torch's errors go on for several sentences
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj, how


def check_format(path: str, ckpt: dict) -> str:
    """The file's format version; one not in READABLE is refused."""
    if ckpt.get("format") not in READABLE:
        raise CheckpointError(f"{path}: checkpoint format {ckpt.get('format')!r} is not one this code reads "
                              f"({', '.join(READABLE)})")
    return ckpt["format"]


def read_run_checkpoint(path: str) -> dict:
    """A file pretrain.py wrote (a shard of a run, or a shipped copy): torch's weights_only loader only."""
    ckpt, _ = read_checkpoint(path, ours=True)
    check_format(path, ckpt)
    return ckpt


def strip_orig_mod(state: dict) -> dict:
    """Drop the `_orig_mod.` segments torch.compile puts into parameter names."""
    return {".".join(p for p in k.split(".") if p != "_orig_mod"): v for k, v in state.items()}


def is_official_state(ckpt: dict) -> bool:
    """A bare state dict of a loss head (the official TRM's / HRM's layout), not a training-state dict."""
    return bool(ckpt) and all(isinstance(v, torch.Tensor) for v in ckpt.values()) and \
        any(k.startswith("model.inner.") for k in strip_orig_mod(ckpt))


def official_config(path_or_uri: str, path: str) -> dict:
    """The all_config.yaml beside an official checkpoint (fetched beside it for hf://) as a dict."""
    if path_or_uri.startswith(HF_SCHEME):
        beside = resolve_checkpoint_path(path_or_uri.rsplit("/", 1)[0] + "/" + OFFICIAL_CONFIG)
    else:
        beside = os.path.join(os.path.dirname(os.path.abspath(path)), OFFICIAL_CONFIG)
    if not os.path.isfile(beside):
        raise CheckpointError(f"{path}: a bare state dict (the official TRM/HRM layout) needs its {OFFICIAL_CONFIG} "
                              f"beside it, and {beside} does not exist")
    try:
        with open(beside) as f:
            config = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{beside}: not readable YAML ({first_line(e)})") from None
    if not isinstance(config, dict) or not isinstance(config.get("arch"), dict):
        raise CheckpointError(f"{beside}: expected a mapping with an 'arch' entry")
    return config


def write_official(folder: str, state: dict, config: dict, name: str = "step_1") -> str:
    """A file in the official TRM's / HRM's layout: a loss head's state dict under its compiled names, `config`
    as all_config.yaml beside it (for differential checks against their code)."""
    path = os.path.join(folder, name)
    atomic_save({f"_orig_mod.{k}": v for k, v in state.items()}, path)
    atomic_write(os.path.join(folder, OFFICIAL_CONFIG), yaml.safe_dump(config))
    return path


def _eval_weights(path: str, ckpt: dict) -> tuple[dict, set | None]:
    """The state dict to evaluate -> (`model` with the EMA shadow over it if any, the shadow's names)."""
    weights = ckpt["model"]
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: 'model' is a {type(weights).__name__}, expected a state dict")
    weights = strip_orig_mod(weights)
    ema = ckpt.get("ema")
    shadow = ema.get("shadow") if isinstance(ema, dict) else None
    if not shadow:
        return weights, None
    shadow = strip_orig_mod(shadow)
    unknown = set(shadow) - set(weights)
    if unknown:
        raise CheckpointError(f"{path}: ema.shadow has {sorted(unknown)[0]}, which is not in 'model'")
    return {**weights, **shadow}, set(shadow)  # buffers (TRM's H_init/L_init) are not in the shadow


def read_model_file(path_or_uri: str, trust_checkpoint: bool = False) -> dict:
    """Any checkpoint evaluation takes (ours or the authors', local or hf://) as one record: path, layout (FORMAT,
    "reference" or "official"), read_with, step, config (the training config, with an `arch` dict), weights (the
    state dict to evaluate: `model` with the EMA shadow over it, names without `_orig_mod.`) and shadow_names
    (None without EMA)."""
    path = resolve_checkpoint_path(path_or_uri)
    ckpt, how = read_checkpoint(path, trust_checkpoint)
    if "model" not in ckpt and is_official_state(ckpt):  # their step is in the file name only (step_N)
        name = os.path.basename(path_or_uri)
        step = int(name[5:]) if name.startswith("step_") and name[5:].isdigit() else None
        ckpt, layout = {"model": ckpt, "config": official_config(path_or_uri, path), "step": step}, "official"
    elif "model" not in ckpt:
        raise CheckpointError(f"{path}: no 'model' entry (keys: {', '.join(map(str, list(ckpt)[:12]))}); "
                              f"not a training checkpoint")
    else:
        layout = check_format(path, ckpt) if "format" in ckpt else "reference"
    weights, shadow_names = _eval_weights(path, ckpt)
    config = ckpt["config"] if isinstance(ckpt.get("config"), dict) else {}
    if not isinstance(config.get("arch"), dict):
        raise CheckpointError(f"{path}: no config.arch entry, so the architecture is unknown")
    return {"path": path, "layout": layout, "read_with": how, "step": ckpt.get("step"), "config": config,
            "weights": weights, "shadow_names": shadow_names}
