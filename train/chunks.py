"""What grain's worker processes run: a dataset's records -> tokenized chunks of rows.

Per dataset: chunks of this process's records, shuffled in windows (train/record_chunks.py), through
the Rust tokenizer, in `data.workers` grain worker processes when that is above 0. A worker
starts a fresh Python (grain spawns it) and unpickles this pipeline, so this module and those it
imports load grain, numpy and tokenizers only: not flaxenc or the config, which bring flax,
transformers and torch (seconds and hundreds of MB per worker).
"""

from __future__ import annotations

import gc
from array import array
from collections.abc import Sequence

import grain
import xxhash

from flaxenc_train.record_chunks import CHUNK, RecordChunks

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


def text_keys(texts: Sequence[str]) -> list[int]:
    """Stable 63-bit keys of texts, for no_duplicates (Python's hash() differs between processes)."""
    digest = xxhash.xxh3_64_intdigest
    return [digest(text.encode()) >> 1 for text in texts]


class TokenizeChunk:
    """A chunk of records (train/record_chunks.py) -> {"rows": [{"ids", "label", "keys"}], "skipped": [messages]},
    each row's "ids" an array("i") per text column; runs in the workers.

    prompts: (each column's prompt or None, each column's prompt length in tokens), or None: the
    prompts are prepended before tokenizing (the keys of no_duplicates stay those of the texts, as ST's
    sampler compares the texts before its collator adds prompts) and each row gets a "prompt_length".
    """

    def __init__(self, tokenizer, max_length: int, with_keys: bool, prompts: tuple | None = None):
        from flaxenc.encoder import rust_tokenizer  # here, in the main process: the workers get its result

        # The Rust tokenizer alone (picklable, so it goes to the workers): the transformers call's ids.
        self.tokenizer, self.with_keys = rust_tokenizer(tokenizer, max_length), with_keys
        self.prompts, self.prompt_lengths = prompts if prompts is not None else (None, None)

    def __call__(self, chunk: dict) -> dict:
        texts = chunk["texts"]
        prompts = self.prompts or (None,) * len(texts)
        ids = [  # as C ints: the batch's arrays are one join of them, and the workers send 4 bytes a token
            [array("i", e.ids) for e in self.tokenizer.encode_batch_fast([prompt + text for text in column] if prompt else column)]
            for prompt, column in zip(prompts, texts)
        ]
        labels = chunk["labels"] or [None] * len(texts[0])
        if self.with_keys:
            keys = zip(*map(text_keys, texts))
            rows = [{"ids": list(row), "label": label, "keys": list(key)} for row, label, key in zip(zip(*ids), labels, keys)]
        else:
            rows = [{"ids": list(row), "label": label} for row, label in zip(zip(*ids), labels)]
        if self.prompt_lengths is not None:
            for row in rows:
                row["prompt_length"] = list(self.prompt_lengths)
        return {"rows": rows, "skipped": chunk["skipped"]}


def row_chunks(
    spec, files: list[str], label_column: str | None, tokenizer, max_length: int, *, seed: int,
    shuffle: bool, shuffle_window: int, skip_bad: bool, with_keys: bool, workers: int, prompts: tuple | None = None,
    process: tuple[int, int] = (0, 1), stride: tuple[int, int] = (0, 1), buffer_rows: int = 0,
) -> grain.IterDataset:
    """Tokenized chunks of one dataset's records on this process (grain workers when workers > 0);
    process: (index, count), which part of a hub dataset's stream is this process's; stride: which records
    of each file are (sources.process_files); buffer_rows: rows the workers keep ready (at least 2 chunks
    each), so that a batch drawn from this dataset finds them."""
    records = RecordChunks(spec, files, label_column, seed=seed, shuffle=shuffle, window=shuffle_window, skip_bad=skip_bad,
                           process=process, stride=stride)
    chunks = records.map(TokenizeChunk(tokenizer, max_length, with_keys, prompts))
    if workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; flaxenc-train defines none
            flags.FLAGS.mark_as_parsed()
        buffer = max(2, -(-buffer_rows // (CHUNK * workers)))
        chunks = chunks.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer),
                                    worker_init_fn=fewer_collections)
    return chunks
