"""Checkpoint files: safe reads, and the model evaluation should use (writes: utils/files.py).

A training checkpoint written by pretrain.py is a dict of tensors and plain types only
(so it loads with `torch.load(weights_only=True)`):
    format       "eqr/1" (utils/run_folder.py owns the run folder and this format)
    step         optimizer steps done
    config       the resolved training config; config["arch"] holds every ModelConfig field,
                 seq_len and vocab_size included, so the file rebuilds its own model
    model        state dict of the ACT loss head (names "model.inner.*"), float32
    ema          {"rate": float, "shadow": {name: tensor}} when EMA is on
    optimizer, carry, rng, loader   what an exact resume needs

The authors' checkpoints (`eqr.pth` in the Hub repo locuslab/EqR-model, see
shared/REFERENCE_CHECKPOINT.md) have the same `model` names, possibly with `_orig_mod.`
segments, an `ema` = {"mu", "shadow"} entry, and a `config["arch"]` without seq_len and
vocab_size. They also hold numpy RNG state and a pickled `carry` dataclass of the
authors' modules, so they are read with RestrictedUnpickler: tensors, plain containers,
numpy arrays and those known state records (rebuilt as SimpleNamespace) and nothing else.

The official TRM's and HRM's files (github SamsungSAILMontreal/TinyRecursiveModels, sapientinc/HRM;
e.g. `step_N` or `checkpoint`) are a bare state dict of the compiled loss head (names
"_orig_mod.model.inner.*", plain tensors: read with weights_only=True), the training config in
`all_config.yaml` beside them; with EMA on, the file already holds the EMA weights.

Any path may be an `hf://OWNER/REPO[@REVISION]/path/in/repo.pth` URI; it is fetched
through the Hugging Face cache (HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE are honoured).
"""
import codecs
import os
import pickle
import types
from collections import OrderedDict

import numpy as np
import torch
import yaml

from models.eqr import REFERENCE_ONLY_KEYS, ConfigError, ModelConfig, RecurrentReasoner, prefix_positions
from models.losses import ACTLossHead
from utils.errors import CheckpointError, first_line
from utils.files import check_archive, file_sha256
from utils.hub import HF_SCHEME, resolve_checkpoint_path
from utils.run_folder import CHECKPOINT_FORMAT, check_shard


def safe_load(path: str, map_location="cpu") -> dict:
    """Load a checkpoint that holds only tensors and plain types; anything else is refused.
    (Resume checks the files' CRCs first: utils/run_folder.intact_checkpoint.)"""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        check_shard(path)  # names the refused global, or the damage, when that is why
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line(e).split('. ')[0]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


# ---------------------------------------------------------------------------------------
# Reading files we did not write: a pickle that can only rebuild what a checkpoint needs.

def _allowed_globals() -> dict:
    allowed = {
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "complex"): complex,
        ("_codecs", "encode"): codecs.encode,  # how protocol 2 stores bytes
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("torch", "Tensor"): torch.Tensor,
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

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualified_name = f"{module}.{name}"


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only ALLOWED_GLOBALS; any other global raises RefusedGlobal."""

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None


def _restricted_load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


# torch.load(pickle_module=...) wants a module with `Unpickler` and `load`.
restricted_pickle = types.ModuleType("restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.load = _restricted_load


def read_checkpoint(path: str, trust_checkpoint: bool = False) -> tuple[dict, str]:
    """Load a checkpoint dict onto the CPU -> (dict, how it was read).

    Tried in order: torch's weights_only loader (our own files), then RestrictedUnpickler
    (the authors' files); `trust_checkpoint` skips both for a plain, unrestricted torch.load.
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
    if trust_checkpoint:
        attempts = [("trusted", dict(weights_only=False))]
    else:
        attempts = [("weights_only", dict(weights_only=True)),
                    ("restricted", dict(weights_only=False, pickle_module=restricted_pickle))]
    for how, kwargs in attempts:
        try:
            obj = torch.load(path, map_location="cpu", **kwargs)
            break
        except RefusedGlobal as e:
            raise CheckpointError(
                f"{path}: refused to unpickle {e.qualified_name} (not a tensor, plain type or known training state); "
                f"pass trust_checkpoint=true only if you trust this file") from None
        except Exception as e:
            error = e
    else:
        reason = first_line(error).split(". ")[0]  # torch's errors go on for several sentences
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj, how


# ---------------------------------------------------------------------------------------
# The model evaluation uses

REFERENCE_TRM = dict(random_init=False, lambda_=1.0, noise_scale=0.0)  # TRM: fixed latents, plain update
EMBEDDING = "model.inner.embed_tokens.embedding_weight"
TOKEN_MLP = "model.inner.L_level.layers.0.mlp_t.gate_up_proj.weight"
DEFAULT_LOSS = "stablemax_cross_entropy"


def strip_orig_mod(state: dict) -> dict:
    """Drop the `_orig_mod.` segments torch.compile puts into parameter names."""
    return {".".join(p for p in k.split(".") if p != "_orig_mod"): v for k, v in state.items()}


def _shape(t) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + (",)" if len(t.shape) == 1 else ")")


def _reference_arch(path: str, arch: dict, weights: dict, data_seq_len: int | None) -> dict:
    """ModelConfig fields for an authors' file: arch dict + sizes read off the weights or the data."""
    family = str(arch.get("name", "eqr")).split("@")[0].rsplit(".", 1)[-1]
    if family not in ("eqr", "trm"):
        raise CheckpointError(f"{path}: config.arch.name {arch.get('name')!r} is neither an EqR nor a TRM model")
    if EMBEDDING not in weights:
        raise CheckpointError(f"{path}: no parameter {EMBEDDING}, so vocab_size is unknown")
    fields = {k: v for k, v in arch.items() if k not in OFFICIAL_ONLY_KEYS}  # options their models lack
    fields.update(REFERENCE_TRM if family == "trm" else {})
    fields.setdefault("vocab_size", weights[EMBEDDING].shape[0])
    if "seq_len" not in fields:
        if data_seq_len is not None:
            fields["seq_len"] = data_seq_len
        elif arch.get("mlp_t") and TOKEN_MLP in weights:
            fields["seq_len"] = weights[TOKEN_MLP].shape[-1]
        else:
            raise CheckpointError(f"{path}: the checkpoint does not record seq_len; pass the dataset (data_path) "
                                  f"it was trained on so seq_len can be read from it")
    return fields


# ---------------------------------------------------------------------------------------
# The official TRM's and HRM's files

OFFICIAL_CONFIG = "all_config.yaml"
# Options of ours that the authors' EqR and TRM lack: dropped from their arch.
OFFICIAL_ONLY_KEYS = {"puzzle_emb_ndim", "puzzle_emb_len", "num_puzzle_identifiers", "H_level_layers",
                      "one_step_grad"}
# Their model class -> our fields that make it, and the defaults of their config class.
OFFICIAL_MODELS = {
    "TinyRecursiveReasoningModel_ACTV1": dict(fixed=REFERENCE_TRM, defaults=dict(puzzle_emb_len=16, no_ACT_continue=True)),
    "HierarchicalReasoningModel_ACTV1": dict(fixed=dict(REFERENCE_TRM, one_step_grad=True, no_ACT_continue=False,
                                                        puzzle_emb_len=0, mlp_t=False), defaults={}),
}
PUZZLE_EMB = "model.inner.puzzle_emb.weights"


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


def _official_arch(path: str, arch: dict, weights: dict, data_seq_len: int | None) -> dict:
    """ModelConfig fields for an official TRM / HRM file: their arch keys, their class's defaults, sizes off the weights."""
    model_class = str(arch.get("name", "")).split("@")[-1]
    if model_class not in OFFICIAL_MODELS:
        raise CheckpointError(f"{path}: config.arch.name {arch.get('name')!r} is not a model this code builds "
                              f"(known: {', '.join(OFFICIAL_MODELS)})")
    if EMBEDDING not in weights:
        raise CheckpointError(f"{path}: no parameter {EMBEDDING}, so vocab_size is unknown")
    model = OFFICIAL_MODELS[model_class]
    fields = {**model["defaults"], **{k: v for k, v in arch.items() if k not in ("seq_len", "vocab_size")},
              **model["fixed"]}
    if fields.get("puzzle_emb_ndim") == "${.hidden_size}":  # an unresolved interpolation of their arch yaml
        fields["puzzle_emb_ndim"] = fields.get("hidden_size")
    if model_class.startswith("Hierarchical"):
        fields["H_level_layers"] = fields.get("H_layers")
    fields["vocab_size"] = weights[EMBEDDING].shape[0]
    if PUZZLE_EMB in weights:
        fields["num_puzzle_identifiers"] = weights[PUZZLE_EMB].shape[0]
    sizes = [fields.get(k, 0) for k in ("puzzle_emb_ndim", "puzzle_emb_len", "hidden_size")]
    prefix = prefix_positions(*sizes) if all(isinstance(n, int) and n >= 0 for n in sizes) and sizes[2] else 0
    if data_seq_len is not None:
        fields["seq_len"] = data_seq_len
    elif fields.get("mlp_t") and TOKEN_MLP in weights:
        fields["seq_len"] = weights[TOKEN_MLP].shape[-1] - prefix
    elif "model.inner.embed_pos.embedding_weight" in weights:
        fields["seq_len"] = weights["model.inner.embed_pos.embedding_weight"].shape[0] - prefix
    else:
        raise CheckpointError(f"{path}: the checkpoint does not record seq_len; pass the dataset (data_path) "
                              f"it was trained on so seq_len can be read from it")
    return fields


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


def check_fits(path: str, model: torch.nn.Module, weights: dict, shadow_names: set | None) -> None:
    """One line naming the first parameter whose name or shape does not fit the architecture."""
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in weights:
            raise CheckpointError(f"{path}: missing parameter {name}, which the architecture needs")
        if not isinstance(weights[name], torch.Tensor):
            raise CheckpointError(f"{path}: {name} is a {type(weights[name]).__name__}, expected a tensor")
        if weights[name].shape != tensor.shape:
            raise CheckpointError(f"{path}: parameter {name} has shape {_shape(weights[name])}, "
                                  f"architecture expects {_shape(tensor)}")
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise CheckpointError(f"{path}: parameter {extra[0]} is not in the architecture")
    if shadow_names is not None:
        untracked = sorted(n for n, p in model.named_parameters()
                           if n not in shadow_names and not getattr(p, "sign_sgd", False))
        if untracked:
            raise CheckpointError(f"{path}: ema.shadow lacks parameter {untracked[0]}")


def load_for_eval(path_or_uri: str, trust_checkpoint: bool = False, data_seq_len: int | None = None,
                  data_vocab_size: int | None = None, overrides: dict | None = None) -> tuple[ACTLossHead, dict]:
    """Rebuild the model a checkpoint (ours or the authors', local or hf://) describes, in eval mode.

    The weights are the EMA shadow when the file has one, else `model`. `data_seq_len` /
    `data_vocab_size` come from the dataset to evaluate on and must agree with the file;
    `overrides` replaces ModelConfig fields (e.g. forward_dtype, H_cycles, halt_max_steps).
    Returns (ACTLossHead on the CPU, info dict).
    """
    path = resolve_checkpoint_path(path_or_uri)
    ckpt, how = read_checkpoint(path, trust_checkpoint)
    official = "model" not in ckpt and is_official_state(ckpt)
    if official:  # their step is in the file name only (step_N)
        name = os.path.basename(path_or_uri)
        step = int(name[5:]) if name.startswith("step_") and name[5:].isdigit() else None
        ckpt = {"model": ckpt, "config": official_config(path_or_uri, path), "step": step}
    if "model" not in ckpt:
        raise CheckpointError(f"{path}: no 'model' entry (keys: {', '.join(map(str, list(ckpt)[:12]))}); "
                              f"not a training checkpoint")
    weights, shadow_names = _eval_weights(path, ckpt)
    train_config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    arch = train_config.get("arch")
    if not isinstance(arch, dict):
        raise CheckpointError(f"{path}: no config.arch entry, so the architecture is unknown")

    if ckpt.get("format", CHECKPOINT_FORMAT) != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {ckpt['format']!r} is not one this code reads ({CHECKPOINT_FORMAT})")
    ours = "format" in ckpt  # else the authors' layout, or the official TRM's / HRM's
    if official:
        fields = _official_arch(path, arch, weights, data_seq_len)
    else:
        fields = dict(arch) if ours else _reference_arch(path, arch, weights, data_seq_len)
    for key, given in (("seq_len", data_seq_len), ("vocab_size", data_vocab_size)):
        if given is not None and fields.get(key) not in (None, given):
            raise CheckpointError(f"{path}: the model was trained with {key} {fields[key]}, the data has {given}")
    loss = arch.get("loss")
    loss_type = loss.get("loss_type", DEFAULT_LOSS) if isinstance(loss, dict) else DEFAULT_LOSS
    unknown = set(overrides or {}) - set(ModelConfig.__dataclass_fields__)
    if unknown:
        raise CheckpointError(f"{path}: overrides.{sorted(unknown)[0]} is not a model option")
    try:
        config = ModelConfig.from_dict(fields, strict=ours, **(overrides or {}))
        with torch.device("meta"):  # shapes only: a config that does not fit its tensors allocates nothing
            skeleton = ACTLossHead(RecurrentReasoner(config), loss_type)
    except (ConfigError, ValueError) as e:
        raise CheckpointError(f"{path}: {first_line(e)}") from None
    check_fits(path, skeleton, weights, shadow_names)
    model = ACTLossHead(RecurrentReasoner(config), loss_type)
    model.load_state_dict(weights, strict=True)
    model.eval()
    info = {
        "source": path,
        "uri": path_or_uri,
        "sha256": file_sha256(path),
        "format": CHECKPOINT_FORMAT if ours else "official" if official else "reference",
        "read_with": how,
        "step": ckpt.get("step"),
        "ema": shadow_names is not None,
        "model_config": config.to_dict(),
        "loss_type": loss_type,
        "ignored_arch_keys": sorted(k for k in set(arch) - REFERENCE_ONLY_KEYS
                                    if k not in fields or k not in ModelConfig.__dataclass_fields__),
        "train_config": train_config,
    }
    return model, info
