"""Hydra composition for the entry points (pretrain.py, evaluate.py): config/ -> a plain dict."""
import os
import re

from omegaconf import OmegaConf

from utils.errors import ConfigError

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))


def compose_config(config_name: str, overrides: list[str], throw_on_missing: bool = True) -> dict:
    """Compose `config_name` with command-line `overrides`; Hydra's multi-line errors become one ConfigError line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None, job_name=os.path.basename(config_name)):
            cfg = compose(config_name=config_name, overrides=overrides)
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=throw_on_missing)
    except (HydraException, OmegaConfBaseException) as e:
        unknown = re.match(r"Could not override '([^']+)'", str(e))
        if unknown:  # Hydra's hint (`+key=...`) would only be refused as an unknown key in turn
            raise ConfigError(f"{unknown.group(1)}: unknown config key (the known ones are in "
                              f"config/{config_name}.yaml and the defaults it names)") from None
        text = str(e).split("Config search path")[0]
        raise ConfigError(" ".join(line.strip() for line in text.splitlines() if line.strip())) from None


def compose_train_config(config_name: str, overrides: list[str]) -> dict:
    """The training config (pretrain.py), with the reference's `dataset.data_path` kept equal to `data_path`."""
    cfg = compose_config(config_name, overrides)
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
