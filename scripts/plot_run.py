"""Draw a training run's curves (loss, exact accuracy train vs test, learning rate) from its metrics.jsonl.

    python scripts/plot_run.py RUN_DIR [--output PATH.png]     # default: RUN_DIR/training_curves.png

Works on a finished run or one still training (pretrain.py draws the same picture when a run ends).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluation.curves import plot_training_curves  # noqa: E402
from utils.errors import RunError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a training run folder (holds metrics.jsonl)")
    parser.add_argument("--output", help="where to write the PNG (default: RUN_DIR/training_curves.png)")
    args = parser.parse_args(argv)
    try:
        if args.output is not None and not args.output.endswith(".png"):
            raise RunError(f"--output: expected a .png path, got {args.output!r}")
        print(plot_training_curves(args.run_dir, args.output))
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
