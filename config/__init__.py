"""Hydra composition for the entry points (pretrain.py, evaluate.py): config/ -> a plain dict."""
import os
import re

from omegaconf import OmegaConf

from utils.errors import ConfigError

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))


def compose_config(config_name: str, overrides: list[str]) -> dict:
    """Compose `config_name` with command-line `overrides`; Hydra's multi-line errors become one ConfigError line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None, job_name=os.path.basename(config_name)):
            cfg = compose(config_name=config_name, overrides=overrides)
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
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
