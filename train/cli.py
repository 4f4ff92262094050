"""`flaxenc-train CONFIG.yaml [key=value ...]`: validate the config, then train (or resume) a model.

Exit status: 0 done, 2 a user error (config, data, model folder, output folder, checkpoint, disk), 3 the
training diverged. User errors are one line on stderr, without a traceback (`--debug` prints it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from flaxenc_train.huge_pages import relaunch_with_huge_pages


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # run as a program: relaunch for faster host memory on CPU, before the heavy imports
        relaunch_with_huge_pages()
    from flaxenc_train.checkpoint import CheckpointError
    from flaxenc_train.config import ConfigError, load_config, to_dict
    from flaxenc_train.loop import TrainingDiverged, train
    from flaxenc_train.output import OutputError

    parser = argparse.ArgumentParser(
        prog="flaxenc-train",
        description="Train a sentence encoder with JAX: a YAML config plus key=value overrides "
        "(e.g. optimizer.learning_rate=1e-4 data.train.limit=1000).",
    )
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, with dotted keys and YAML values")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--print-config", action="store_true", help="print the validated config and exit")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error too")
    parser.add_argument(
        "--no-compile-cache", action="store_true",
        help="compile every program afresh (default: JAX's persistent cache in ~/.cache/flaxenc/jax, "
        "or $FLAXENC_COMPILE_CACHE)",
    )
    args = parser.parse_args(argv)
    if args.no_compile_cache:
        os.environ["FLAXENC_COMPILE_CACHE"] = "0"  # read by flaxenc.compile_cache.enable()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        config = load_config(args.config, args.overrides)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
            return 0
        summary = train(config, progress=not args.no_progress)
    # ValueError: bad data (a missing column, an empty table, a label out of range) or model folder;
    # OSError: the filesystem (a missing, unreadable or unwritable file), named by the error.
    except (ConfigError, CheckpointError, OutputError, ValueError, OSError) as error:
        if args.debug:
            traceback.print_exc()
        print(f"flaxenc-train: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        if args.debug:
            traceback.print_exc()
        print(f"flaxenc-train: stopped: {error}", file=sys.stderr)
        return 3
    print(summary)
    return 0


def _one_line(error: BaseException) -> str:
    """The message, with the file an OSError names when its text does not (e.g. "[Errno 13] Permission denied")."""
    if isinstance(error, OSError) and error.filename and error.strerror and str(error.filename) not in error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error).strip() or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
