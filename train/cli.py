"""`flaxenc-train CONFIG.yaml [key=value ...]`: validate the config, then train (or resume) a model."""

from __future__ import annotations

import argparse
import logging
import sys

from train.huge_pages import relaunch_with_huge_pages


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # run as a program: relaunch for faster host memory on CPU, before the heavy imports
        relaunch_with_huge_pages()
    from train.checkpoint import CheckpointError
    from train.config import ConfigError, load_config, to_dict
    from train.loop import TrainingDiverged, train

    parser = argparse.ArgumentParser(
        prog="flaxenc-train",
        description="Train a sentence encoder with JAX: a YAML config plus key=value overrides "
        "(e.g. optimizer.learning_rate=1e-4 data.train.limit=1000).",
    )
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, with dotted keys and YAML values")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--print-config", action="store_true", help="print the validated config and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        config = load_config(args.config, args.overrides)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
            return 0
        summary = train(config, progress=not args.no_progress)
    except (ConfigError, CheckpointError, FileNotFoundError) as error:
        print(f"flaxenc-train: error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # bad data: a missing column, an empty table, a non-numeric label
        print(f"flaxenc-train: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"flaxenc-train: stopped: {error}", file=sys.stderr)
        return 3
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
