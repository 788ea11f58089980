"""CPU-scale reproduction study: small EqR / TRM / feed-forward models on easy Sudoku and 11x11 mazes.

    python scripts/reproduce_cpu.py                 # everything: data, training, evaluation, report
    python scripts/reproduce_cpu.py run [PATTERN]   # only data, training and evaluation (stages matching the patterns)
    python scripts/reproduce_cpu.py report          # only the report and the shipped checkpoints
    python scripts/reproduce_cpu.py --list          # the stages, their commands and whether they are done

The stages (scripts/cpu_study/study.py) run one after another with one CPU thread (runner.py). Rerunning
skips finished stages, resumes an interrupted training run from its latest checkpoint and an interrupted
sweep from its partial counts. Wall times and outcomes go to outputs/cpu_repro/ledger.json, logs to
outputs/cpu_repro/logs/. The report fills docs/cpu_reproduction.template.md into docs/cpu_reproduction.md
and writes docs/cpu_reproduction/ (plots, results.json) and checkpoints/shipped/ (report.py, plots.py,
shipped.py).
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "scripts")]

from cpu_study import plots, report, runner, shipped, study  # noqa: E402
from utils.errors import RunError, first_line  # noqa: E402
from utils.files import atomic_write  # noqa: E402


def write_report() -> None:
    previous = report.load_previous()
    res = report.collect(previous)
    res["shipped"] = shipped.export(res, previous.get("shipped", {}))
    with open(report.TEMPLATE) as f:
        doc = report.fill(f.read(), res)
    names = plots.plot_all(res, report.REPORT_DIR)
    atomic_write(report.RESULTS, json.dumps(res, indent=1, sort_keys=True) + "\n")
    atomic_write(report.REPORT_DOC, doc + ("" if doc.endswith("\n") else "\n"))
    if res["shipped"]:
        shipped.write_readme(res)
    print(f"wrote {report.REPORT_DOC}, {report.REPORT_DIR}/ ({', '.join(names)}, results.json)"
          + "".join(f", {s['path']}" for s in res["shipped"].values()) + (", " + shipped.README if res["shipped"] else ""))


def main(argv: list) -> int:
    os.chdir(ROOT)
    what = argv[0] if argv else "all"
    ledger, logs = report.LEDGER, os.path.join(study.WORK_DIR, "logs")
    try:
        if what in ("-h", "--help"):
            print(__doc__.strip())
            return 0
        if what == "--list":
            print("\n".join(runner.listing(study.stages(), ledger)))
            return 0
        if what not in ("all", "run", "report"):
            raise RunError(f"unknown command {what!r} (expected run, report, --list or nothing)")
        if what in ("all", "run"):
            runner.run_all(runner.selected(study.stages(), argv[1:]), ledger, logs, study.ENV, ROOT)
        if what in ("all", "report"):
            write_report()
    except RunError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
