"""The CPU reproduction study (scripts/reproduce_cpu.py): study.py defines the stages, runner.py runs them,
report.py, plots.py and shipped.py turn finished stages into docs/cpu_reproduction.md and its files."""
