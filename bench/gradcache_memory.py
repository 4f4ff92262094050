"""Compiled memory of a training step: CachedMultipleNegativesRankingLoss (GradCache) against plain MNRL.

`python -m bench.gradcache_memory` compiles (does not run) the jitted TrainStep of all-MiniLM-L6-v2
on (anchor, positive) pairs of `--tokens` tokens with dropout on, for plain MNRL at a few global
batches and CachedMNRL at mini-batches of `--mini-batch-size`, and prints XLA's memory analysis of
each compiled program: temporaries (activations and other scratch), arguments (parameters,
optimizer state, batch) and outputs, in MiB. Compiling needs no accelerator: the figures are those
of the device jax runs on (CPU by default).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

import flaxenc
from bench.models import minilm_folder
from flaxenc import losses, optim
from flaxenc.train_step import TrainStep, init_train_state, shard_batch


def compiled_memory(encoder, loss, batch_size: int, tokens: int) -> dict:
    tx = optim.adamw(2e-5)
    graphdef, state = init_train_state(encoder.model, tx)
    step = TrainStep(graphdef, loss, tx)
    state = step.place_state(state)
    ids = np.ones((batch_size, tokens), np.int32)
    column = {"input_ids": ids, "attention_mask": ids}
    batch = shard_batch({"columns": [column, column]}, step.mesh)
    start = time.perf_counter()
    analysis = step.lower(state, batch).compile().memory_analysis()
    mib = 2.0**20
    return {
        "temp_mib": analysis.temp_size_in_bytes / mib,
        "argument_mib": analysis.argument_size_in_bytes / mib,
        "output_mib": analysis.output_size_in_bytes / mib,
        "peak_mib": (analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes)
        / mib,
        "compile_s": time.perf_counter() - start,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="tokens per sentence")
    parser.add_argument("--mini-batch-size", type=int, default=32)
    parser.add_argument("--plain", type=int, nargs="*", default=[128, 1024], help="global batches for plain MNRL")
    parser.add_argument("--cached", type=int, nargs="*", default=[1024, 4096], help="global batches for CachedMNRL")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    encoder = flaxenc.SentenceEncoder.from_pretrained(minilm_folder())
    rows = []
    for name, batches, loss in (
        ("MNRL", args.plain, losses.MultipleNegativesRankingLoss()),
        ("CachedMNRL", args.cached, losses.CachedMultipleNegativesRankingLoss(mini_batch_size=args.mini_batch_size)),
    ):
        for batch_size in batches:
            figures = compiled_memory(encoder, loss, batch_size, args.tokens)
            rows.append({"loss": name, "batch": batch_size, **figures})
            print(
                f"{name:>10} batch {batch_size:>5}: temporaries {figures['temp_mib']:8.1f} MiB, arguments "
                f"{figures['argument_mib']:6.1f} MiB, outputs {figures['output_mib']:6.1f} MiB "
                f"(compiled in {figures['compile_s']:.0f} s)",
                flush=True,
            )
    info = {
        "device": str(jax.devices()[0]),
        "tokens": args.tokens,
        "mini_batch_size": args.mini_batch_size,
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
