"""An entry point's life (pretrain.py, evaluate.py, solve.py, diagnose.py): the command line, the composed config,
the processes, the run, and a known error as one `error:` line and exit status 2."""
import sys

from utils.errors import CheckpointError, ConfigError, DatasetError, RunError
from utils.files import os_error_line, release_folders


def parse_argv(argv: list[str], config_name: str | None) -> tuple[str | None, list[str]]:
    """-> (config name, key=value overrides). `config_name`: the default of an entry point that takes
    `--config-name NAME` (None: one that takes overrides only)."""
    overrides, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if config_name and arg in ("--config-name", "-cn"):
            if i + 1 == len(argv):
                raise ConfigError(f"{arg}: expected a config name such as train/eqr_sudoku")
            config_name, i = argv[i + 1], i + 1
        elif config_name and arg.startswith("--config-name="):
            config_name = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            raise ConfigError(f"{arg}: unknown flag " + ("(only --config-name NAME and key=value overrides)" if config_name
                                                         else "(this entry point takes key=value overrides only)"))
        else:
            overrides.append(arg)
        i += 1
    return config_name and config_name.removesuffix(".yaml"), overrides


def run_entry(argv: list[str] | None, usage, configure, run, config_name: str | None = None) -> int:
    """--help (usage(argv) -> text), the checked config (configure(config name, overrides), with .device and
    .threads), its processes, run(cfg, processes). `config_name`: the default config of an entry point that takes
    `--config-name NAME`; the others take key=value overrides only."""
    from utils.processes import close_processes, report_error, setup_processes  # here: --help needs no torch
    argv = sys.argv[1:] if argv is None else argv
    processes = None
    try:
        if any(a in ("-h", "--help") for a in argv):
            print(usage(argv if config_name else [a for a in argv if not a.startswith("-")]))
            return 0
        cfg = configure(*parse_argv(argv, config_name))
        processes = setup_processes(cfg.device, cfg.threads)
        run(cfg, processes)
    except (ConfigError, DatasetError, CheckpointError, RunError) as e:
        report_error(e)
        return 2
    except OSError as e:  # a file no check foresaw (a disk that filled, a mount that went away)
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    finally:
        release_folders()
        close_processes(processes)
    return 0
