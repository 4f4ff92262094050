"""flaxenc-encode on a corpus file against ST's encode of the same sentences, in sentences/s.

    python -m bench.corpus [--model minilm] [--sentences 2000] [--batch-size 32] [--shard-size 1000] [--json PATH]

flaxenc's figure is the whole command (read the jsonl, tokenize, encode on every local device,
write the .npy shards), after one warm-up run into another folder (its compiles); ST's is
`SentenceTransformer.encode` of the sentences already in memory, after one warm-up call. The
fastest of `--repeats` passes counts, the two sides alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from bench.data import stsb_sentences  # noqa: E402
from bench.encoding import load_st  # noqa: E402
from bench.models import MINILM, ModelFolders  # noqa: E402
from bench.timing import matmul_precision, timed  # noqa: E402
from flaxenc_train.encode import encode_corpus  # noqa: E402


def measure_corpus_encode(folder: Path, sentences: list[str], batch_size: int, shard_size: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="flaxenc-corpus-") as root, matmul_precision("float32"):
        corpus = Path(root) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in sentences), encoding="utf-8")
        outputs = iter(Path(root) / f"out-{i}" for i in range(repeats + 1))
        st_model = load_st(folder, "float32")
        runs = {
            "flaxenc": lambda: encode_corpus(str(folder), [str(corpus)], next(outputs), shard_size=shard_size,
                                             batch_size=batch_size, progress=False),
            "st": lambda: st_model.encode(sentences, batch_size=batch_size, show_progress_bar=False),
        }
        first_call = {side: timed(run)[0] for side, run in runs.items()}
        passes = {side: [] for side in runs}
        for _ in range(repeats):
            for side, run in runs.items():
                passes[side].append(timed(run)[0])
        written = np.concatenate([np.load(p) for p in sorted((Path(root) / "out-0").glob("embeddings-*.npy"))])
        expected = st_model.encode(sentences, batch_size=batch_size, show_progress_bar=False)
    result = {"sentences": len(sentences), "batch_size": batch_size, "shard_size": shard_size}
    for side in runs:
        result[side] = {"per_s": len(sentences) / min(passes[side]), "first_call_s": first_call[side], "passes_s": passes[side]}
    result["ratio"] = result["flaxenc"]["per_s"] / result["st"]["per_s"]
    result["max_abs_diff"] = float(np.abs(written - expected).max())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.corpus", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--sentences", type=int, default=2000, help="STS-B sentences (a seeded subset)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="flaxenc-bench-") as root:
        folder = ModelFolders(Path(root)).get(args.model)
        result = {"model": args.model, **measure_corpus_encode(folder, stsb_sentences(args.sentences), args.batch_size,
                                                               args.shard_size, args.repeats)}
    print(f"flaxenc-encode {result['flaxenc']['per_s']:,.1f} sentences/s, ST encode {result['st']['per_s']:,.1f}/s, "
          f"ratio {result['ratio']:.2f}, max abs diff {result['max_abs_diff']:.1e}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
