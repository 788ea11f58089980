"""Hydra composition for the entry points (pretrain.py, evaluate.py): config/ -> a plain dict."""
import os
import re
import sys

from omegaconf import OmegaConf

from config import reference_keys
from utils.entry import parse_argv
from utils.errors import ConfigError

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))


def compose_config(config_name: str, overrides: list[str], entry: str | None = None,
                   eval_yaml: str | None = None, throw_on_missing: bool = True) -> dict:
    """Compose `config_name` with command-line `overrides` and, for evaluation, a yaml of keys that the overrides
    win over. entry "train" or "eval" also accepts the authors' spellings of that entry point's keys (see
    config/reference_keys.py); None (solve.py, which the authors do not have) accepts only ours.
    Hydra's multi-line errors become one ConfigError line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    typed = reference_keys.typed_keys(entry, overrides) if entry else set()
    if entry:
        overrides = reference_keys.rewrite_overrides(entry, overrides)
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None, job_name=os.path.basename(config_name)):
            cfg = compose(config_name=config_name, overrides=overrides)
        if eval_yaml is not None:
            merge_eval_yaml(cfg, eval_yaml, overrides)
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=throw_on_missing)
    except (HydraException, OmegaConfBaseException) as e:
        unknown = re.match(r"Could not override '([^']+)'", str(e))
        if unknown:  # Hydra's hint (`+key=...`) would only be refused as an unknown key in turn
            raise ConfigError(f"{unknown.group(1)}: unknown config key (the known ones are in "
                              f"config/{config_name}.yaml and the defaults it names)") from None
        text = str(e).split("Config search path")[0]
        raise ConfigError(" ".join(line.strip() for line in text.splitlines() if line.strip())) from None
    return reference_keys.apply_reference_keys(entry, container, typed) if entry else container


def merge_eval_yaml(cfg, path: str, overrides: list[str]) -> None:
    """The authors' `eval_yaml=FILE`: its keys replace the composed values, except those set on the command line."""
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    if not os.path.isfile(path):
        raise ConfigError(f"eval_yaml: {path}: no such file")
    try:
        loaded = OmegaConf.load(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as e:
        raise ConfigError(f"eval_yaml: {path}: not a readable yaml file ({' '.join(str(e).split())})") from None
    if not OmegaConf.is_dict(loaded):
        raise ConfigError(f"eval_yaml: {path}: expected a mapping of evaluation keys")
    loaded = OmegaConf.to_container(loaded, resolve=False)  # `${halt_max_steps}` resolves against the final config
    on_command_line = {o.partition("=")[0].lstrip("+~").split(".")[0] for o in overrides}
    OmegaConf.set_struct(cfg, False)
    for key, value in loaded.items():
        name = reference_keys.ALIASES["eval"].get(key, key)
        if name not in cfg and name not in reference_keys.their_keys("eval"):
            raise ConfigError(f"{path}: {key}: unknown evaluation key (the known ones are in config/cfg_eval.yaml "
                              f"and docs/reference_notes.md)")
        if name not in on_command_line:
            cfg[name] = value


def compose_train_config(config_name: str, overrides: list[str]) -> dict:
    """The training config (pretrain.py), with the reference's `dataset.data_path` kept equal to `data_path`."""
    cfg = compose_config(config_name, overrides, "train")
    cfg["dataset"]["data_path"] = cfg["data_path"]  # keep the alias consistent in the saved config
    return cfg


def presets(group: str) -> list[str]:
    """The preset names of config/<group>/ (train, eval, arch, dataset)."""
    return sorted(name.removesuffix(".yaml") for name in os.listdir(os.path.join(CONFIG_DIR, group))
                  if name.endswith(".yaml"))


def config_help(config_name: str, overrides: list[str], preset_groups: dict[str, str]) -> str:
    """--help's second half: the presets of each group (group -> how to pick one) and every key of the
    composed config with its default, as key=value overrides."""
    lines = [f"presets, {usage}: {', '.join(presets(group))}" for group, usage in preset_groups.items()]
    lines.append(f"\nkeys and defaults of {config_name} (comments in {os.path.join(CONFIG_DIR, config_name)}.yaml "
                 f"and the files it names):")

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}{key}.", sub)
        else:
            text = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
            lines.append(f"  {prefix[:-1]}={text}")

    walk("", compose_config(config_name, overrides, throw_on_missing=False))
    return "\n".join(lines)


def compose_eval_config(overrides: list[str]) -> dict:
    """The evaluation config (evaluate.py); `eval_yaml=FILE` (the authors' form) loads a yaml of its keys."""
    eval_yaml = None
    rest = []
    for override in overrides:
        key, _, value = override.partition("=")
        if reference_keys.ALIASES["eval"].get(key.lstrip("+"), key.lstrip("+")) == "eval_yaml":
            eval_yaml = value
        else:
            rest.append(override)
    return compose_config("cfg_eval", rest, "eval", eval_yaml)


COMMANDS = {"pretrain": "eqr-train", "evaluate": "eqr-evaluate", "solve": "eqr-solve", "diagnose": "eqr-diagnose"}


def help_text(doc: str, argv: list[str], config_name: str | None, preset_groups: dict[str, str]) -> str:
    """An entry point's --help: its docstring, then (with a config) the presets and every key of the config that
    `argv` composes (`--config-name NAME` picks another, key=value overrides apply)."""
    if config_name is None:
        return doc
    config_name, overrides = parse_argv([a for a in argv if a not in ("-h", "--help")], config_name)
    return doc + "\n" + config_help(config_name, overrides, preset_groups)


def answer_help(entry: str, doc: str, config_name: str | None, preset_groups: dict[str, str]) -> None:
    """--help before torch is imported (that takes seconds): called first in each entry point, it prints help_text
    and exits when this process is `python ENTRY.py ... --help` or the console command's (eqr-train ...)."""
    if os.path.basename(sys.argv[0]) not in (f"{entry}.py", COMMANDS[entry]):
        return
    if not any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        return
    try:
        print(help_text(doc, sys.argv[1:], config_name, preset_groups))
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    sys.exit(0)
