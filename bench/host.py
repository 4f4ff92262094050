"""The host side alone: encode() with the model replaced by a no-op program, against the tokenizer.

On an accelerator the model is cheap and the host (tokenize, sort, pack, transfer, dispatch,
gather) sets the ceiling: what it delivers here bounds encode's sentences/s whatever the device.
Also the first encode() call of a second process, whose programs come from the persistent
compilation cache, against ST's first call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

import flaxenc
from bench.timing import timed

REPO = Path(__file__).resolve().parents[1]


def _no_op_embed(dimension: int):
    """A compiled program of encode's inputs that returns zeros: the transfer and dispatch stay, the model goes."""
    return jax.jit(lambda state, batch, prompt_length: jnp.zeros((batch["attention_mask"].shape[0], dimension)))


def measure_host_encode(folder: Path, sentences: list[str], batch_size: int, repeats: int) -> dict:
    """Sentences/s of encode() with a no-op model and of the Rust tokenizer alone on the same sentences."""
    encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
    encoder._embed = _no_op_embed(encoder.embedding_dimension)  # the one program encode() dispatches
    tokenizer = encoder._fast_tokenizer()
    runs = {
        "host": lambda: encoder.encode(sentences, batch_size=batch_size),
        "tokenizer": lambda: tokenizer.encode_batch_fast(sentences),
    }
    runs["host"]()  # compiles the no-op for each batch shape
    passes = {side: [] for side in runs}
    for _ in range(repeats):
        for side, run in runs.items():
            passes[side].append(timed(run)[0])
    result = {"sentences": len(sentences), "cores": os.cpu_count()}
    for side in runs:
        result[side] = {"per_s": len(sentences) / min(passes[side]), "passes_s": passes[side]}
    result["ratio"] = result["host"]["per_s"] / result["tokenizer"]["per_s"]
    return result


_FIRST_CALL = """
import json, sys, time
start = time.perf_counter()
if sys.argv[1] == "flaxenc":
    import flaxenc
    model = flaxenc.SentenceEncoder.from_pretrained(sys.argv[2])
    encode = lambda: model.encode(SENTENCES, batch_size=BATCH)
else:
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(sys.argv[2], device="cpu")
    encode = lambda: model.encode(SENTENCES, batch_size=BATCH, show_progress_bar=False)
loaded = time.perf_counter()
encode()
print(json.dumps({"load_s": loaded - start, "first_call_s": time.perf_counter() - loaded}))
"""


def _first_call(side: str, folder: Path, sentences: list[str], batch_size: int, cache: str) -> dict:
    program = f"SENTENCES = {sentences!r}\nBATCH = {batch_size}\n" + _FIRST_CALL
    env = {**os.environ, "FLAXENC_COMPILE_CACHE": cache, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", program, side, str(folder)], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the {side} first-call process failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_first_call(folder: Path, sentences: list[str], batch_size: int) -> dict:
    """Seconds of the first encode() call in a fresh process: flaxenc without a cache, flaxenc in a
    second process with the cache the first one filled, and ST."""
    with tempfile.TemporaryDirectory(prefix="flaxenc-cache-") as cache:
        cold = _first_call("flaxenc", folder, sentences, batch_size, cache)
        warm = _first_call("flaxenc", folder, sentences, batch_size, cache)
    st = _first_call("st", folder, sentences, batch_size, "0")
    return {"sentences": len(sentences), "batch_size": batch_size, "flaxenc_cold": cold, "flaxenc_warm_cache": warm,
            "st": st, "ratio": warm["first_call_s"] / st["first_call_s"]}
