"""What grain's worker processes run: a dataset's records -> tokenized chunks of rows.

Per dataset: this process's records (train/sources.py), shuffled in windows, 256 at a time through
the Rust tokenizer, in `data.workers` grain worker processes when that is above 0. A worker
starts a fresh Python (grain spawns it) and unpickles this pipeline, so this module and those it
imports load grain, numpy and tokenizers only: not flaxenc or the config, which bring flax,
transformers and torch (seconds and hundreds of MB per worker).
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Sequence

import grain

from flaxenc_train.sources import RecordSource
from flaxenc_train.window_shuffle import WindowShuffle

CHUNK = 256  # records tokenized in one call (the fast tokenizer's batch API)
GC_FIRST_THRESHOLD = 50_000  # allocations between the cyclic collector's youngest passes (Python: 700)


def fewer_collections(*_worker) -> None:
    """Raises the cyclic garbage collector's first threshold to GC_FIRST_THRESHOLD where it is lower; in the
    training process (the pipeline's batches) and in grain's workers (their worker_init_fn).

    The pipeline allocates lists and dicts by the million, freed by reference counting, not cycles;
    at Python's default rate the collector's passes, which also walk every row in flight, took a
    fifth of the pipeline's time on short pairs (README, "Input pipeline alone").
    """
    first, *older = gc.get_threshold()
    if 0 < first < GC_FIRST_THRESHOLD:
        gc.set_threshold(GC_FIRST_THRESHOLD, *older)


def text_key(text: str) -> int:
    """A stable 64-bit key of a text (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


class TokenizeChunk:
    """A chunk of records -> {"rows": [{"ids", "label", "keys"}], "skipped": [messages]}; runs in the workers.

    prompts: (each column's prompt or None, each column's prompt length in tokens), or None: the
    prompts are prepended before tokenizing (the keys of no_duplicates stay those of the texts, as ST's
    sampler compares the texts before its collator adds prompts) and each row gets a "prompt_length".
    """

    def __init__(self, tokenizer, max_length: int, with_keys: bool, prompts: tuple | None = None):
        from flaxenc.encoder import rust_tokenizer  # here, in the main process: the workers get its result

        # The Rust tokenizer alone (picklable, so it goes to the workers): the transformers call's ids.
        self.tokenizer, self.with_keys = rust_tokenizer(tokenizer, max_length), with_keys
        self.prompts, self.prompt_lengths = prompts if prompts is not None else (None, None)

    def __call__(self, records: Sequence[dict]) -> dict:
        columns = len(records[0]["texts"])
        prompts = self.prompts or (None,) * columns
        ids = [
            [e.ids for e in self.tokenizer.encode_batch_fast([(prompts[c] or "") + r["texts"][c] for r in records])]
            for c in range(columns)
        ]
        rows = []
        for i, record in enumerate(records):
            row = {"ids": [ids[c][i] for c in range(columns)], "label": record["label"]}
            if self.with_keys:
                row["keys"] = [text_key(text) for text in record["texts"]]
            if self.prompt_lengths is not None:
                row["prompt_length"] = list(self.prompt_lengths)
            rows.append(row)
        return {"rows": rows, "skipped": [message for r in records for message in r["skipped"]]}


def row_chunks(
    spec, files: list[str], label_column: str | None, tokenizer, max_length: int, *, seed: int,
    shuffle: bool, shuffle_window: int, skip_bad: bool, with_keys: bool, workers: int, prompts: tuple | None = None,
    process: tuple[int, int] = (0, 1), buffer_rows: int = 0,
) -> grain.IterDataset:
    """Tokenized chunks of one dataset's records on this process (grain workers when workers > 0);
    process: (index, count), which part of a hub dataset's stream is this process's; buffer_rows: rows
    the workers keep ready (at least 2 chunks each), so that a batch drawn from this dataset finds them."""
    records: grain.IterDataset = RecordSource(spec, files, label_column, seed, shuffle, skip_bad, process)
    if shuffle and shuffle_window > 1:
        records = WindowShuffle(records, shuffle_window, seed)
    chunks = records.batch(CHUNK, batch_fn=list).map(TokenizeChunk(tokenizer, max_length, with_keys, prompts))
    if workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; flaxenc-train defines none
            flags.FLAGS.mark_as_parsed()
        buffer = max(2, -(-buffer_rows // (CHUNK * workers)))
        chunks = chunks.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer),
                                    worker_init_fn=fewer_collections)
    return chunks
