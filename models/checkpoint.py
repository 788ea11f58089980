"""The model a checkpoint describes, rebuilt for evaluation (load_for_eval).

The files themselves (our format, the authors' EqR/TRM `.pth`, the official TRM's and HRM's state dict
with all_config.yaml, hf:// paths) are read by utils/checkpoint.py; here their config becomes a ModelConfig.
"""
import torch

from models.eqr import REFERENCE_ONLY_KEYS, ConfigError, ModelConfig, RecurrentReasoner, prefix_positions
from models.losses import ACTLossHead
from utils.checkpoint import FORMAT, check_fits, read_model_file
from utils.errors import CheckpointError, first_line
from utils.files import file_sha256

REFERENCE_TRM = dict(random_init=False, lambda_=1.0, noise_scale=0.0)  # TRM: fixed latents, plain update
EMBEDDING = "model.inner.embed_tokens.embedding_weight"
TOKEN_MLP = "model.inner.L_level.layers.0.mlp_t.gate_up_proj.weight"
DEFAULT_LOSS = "stablemax_cross_entropy"


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


def load_for_eval(path_or_uri: str, trust_checkpoint: bool = False, data_seq_len: int | None = None,
                  data_vocab_size: int | None = None, overrides: dict | None = None) -> tuple[ACTLossHead, dict]:
    """Rebuild the model a checkpoint (ours or the authors', local or hf://) describes, in eval mode.

    The weights are the EMA shadow when the file has one, else `model`. `data_seq_len` /
    `data_vocab_size` come from the dataset to evaluate on and must agree with the file;
    `overrides` replaces ModelConfig fields (e.g. forward_dtype, H_cycles, halt_max_steps).
    Returns (ACTLossHead on the CPU, info dict).
    """
    file = read_model_file(path_or_uri, trust_checkpoint)
    path, arch, weights, shadow_names = file["path"], file["config"]["arch"], file["weights"], file["shadow_names"]
    ours = file["layout"] == FORMAT
    if file["layout"] == "official":
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
        "format": file["layout"],
        "read_with": file["read_with"],
        "step": file["step"],
        "ema": shadow_names is not None,
        "model_config": config.to_dict(),
        "loss_type": loss_type,
        "ignored_arch_keys": sorted(k for k in set(arch) - REFERENCE_ONLY_KEYS
                                    if k not in fields or k not in ModelConfig.__dataclass_fields__),
        "train_config": file["config"],
    }
    return model, info
