"""A dataset's checked records on this process, shuffled in windows, in chunks for the tokenizer.

`RecordChunks` is the grain IterDataset at the head of each dataset's pipeline. It reads a window
of `window` usable records from this process's files (train/sources.py: a block of lines or
records at a time, checked column by column), permutes it with one numpy permutation seeded by
(seed, window number), and yields it in chunks of at most CHUNK records, each
{"texts": [one list per text column], "labels": list or None, "skipped": [messages]}. Whole
chunks, not single records, pass through grain: one Python step per chunk instead of several per
record. Without shuffling a window is one chunk, in file order.

The state is the reading position where the window being yielded began (epoch, file, records or
lines consumed in it), the window's number and the chunks of it yielded: a restored iterator reads
that window again and continues after them. Files are read in an order reshuffled each epoch.
"""

from __future__ import annotations

import grain
import numpy as np

from flaxenc_train.sources import RECORDS_READ, DataError, FileReader, SourceSpec, check_block, is_hub

CHUNK = 256  # records tokenized in one call (the fast tokenizer's batch API)


class RecordChunks(grain.IterDataset):
    """Chunks of this process's checked records, shuffled within windows of `window` records."""

    def __init__(self, spec, files: list[str], label_column: str | None, *, seed: int, shuffle: bool, window: int,
                 skip_bad: bool, process: tuple[int, int] = (0, 1), stride: tuple[int, int] = (0, 1)):
        """process: (index, count), for a hub dataset, which every process streams its part of; stride:
        (offset, step), the records of each file that are this process's (sources.process_files)."""
        super().__init__()
        self.spec, self.files, self.label_column = SourceSpec.of(spec), list(files), label_column
        self.seed, self.shuffle, self.skip_bad = seed, shuffle, skip_bad
        self.window = window if shuffle and window > 1 else CHUNK
        self.hub = is_hub(spec)
        self.parts = [process] if self.hub else []
        self.stride = stride

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """grain's worker processes: worker w of W reads files w, w + W, ... of this process's where it has
        at least W files, else every W-th of its records of each (of a hub dataset, its part of this
        process's stream)."""
        worker, workers = sl.start or 0, sl.step or 1
        if self.hub:
            self.parts = [*self.parts, (worker, workers)]
        elif len(self.files) >= workers:
            self.files = self.files[sl]
        else:
            offset, step = self.stride
            self.stride = (offset + step * worker, step * workers)

    def __iter__(self) -> _RecordChunksIterator:
        return _RecordChunksIterator(self)

    def __str__(self) -> str:
        return f"RecordChunks({self.spec.path}, window={self.window})"


class _RecordChunksIterator(grain.DatasetIterator):
    def __init__(self, source: RecordChunks):
        super().__init__()
        self._source = source
        self._position = {"epoch": 0, "file": 0, "record": 0}  # where the next read starts
        self._start = dict(self._position)  # where the window being yielded started
        self._window, self._chunks, self._yielded = -1, [], 0
        self._reader: FileReader | None = None

    # -- reading ---------------------------------------------------------------------------

    def _order(self, epoch: int) -> list[str]:
        files = self._source.files
        if not self._source.shuffle:
            return files
        return [files[i] for i in np.random.default_rng([self._source.seed, epoch]).permutation(len(files))]

    def _next_file(self) -> None:
        self._close_reader()
        position = self._position
        position["file"], position["record"] = position["file"] + 1, 0
        if position["file"] == len(self._source.files):
            position["epoch"], position["file"] = position["epoch"] + 1, 0

    def _read(self, wanted: int) -> tuple[list[list[str]], list[float] | None, list[str]]:
        """The next `wanted` usable records as columns, and the messages of the bad ones skipped on the way."""
        source, position = self._source, self._position
        columns = [*source.spec.text_columns, *([source.label_column] if source.label_column else [])]
        texts, labels, skipped = [[] for _ in source.spec.text_columns], [] if source.label_column else None, []
        barren = 0  # files ended in a row without a usable record
        while len(texts[0]) < wanted:
            if self._reader is None:
                path = self._order(position["epoch"])[position["file"]]
                self._reader = FileReader(source.spec, path, columns, source.parts, position["record"], source.stride)
            block = self._reader.read(wanted - len(texts[0]))
            if self._reader.position == position["record"]:  # the end of the file
                barren += 1
                if barren > len(source.files):
                    raise DataError(f"{source.spec.path}: no usable record in {', '.join(source.files)}")
                self._next_file()
                continue
            position["record"] = self._reader.position
            RECORDS_READ[self._reader.path] += len(block.raws)
            block_texts, block_labels, block_skipped = check_block(block, source.spec, source.label_column, source.skip_bad)
            if block_texts[0]:
                barren = 0
            for column, more in zip(texts, block_texts):
                column.extend(more)
            if labels is not None:
                labels.extend(block_labels)
            skipped.extend(block_skipped)
        return texts, labels, skipped

    def _fill(self) -> None:
        """Reads the next window, permutes it, and cuts it into chunks."""
        self._start = dict(self._position)
        texts, labels, skipped = self._read(self._source.window)
        self._window += 1
        if self._source.shuffle and self._source.window > 1:
            order = np.random.default_rng([self._source.seed, self._window]).permutation(len(texts[0])).tolist()
            texts = [[column[i] for i in order] for column in texts]
            labels = None if labels is None else [labels[i] for i in order]
        self._chunks = [
            {"texts": [column[at : at + CHUNK] for column in texts], "labels": None if labels is None else labels[at : at + CHUNK],
             "skipped": skipped if at == 0 else []}
            for at in range(0, len(texts[0]), CHUNK)
        ]
        self._yielded = 0

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- grain's iterator ------------------------------------------------------------------

    def __next__(self) -> dict:
        if self._yielded == len(self._chunks):
            self._fill()
        self._yielded += 1
        return self._chunks[self._yielded - 1]

    def get_state(self) -> dict:
        return {**self._start, "window": self._window, "chunk": self._yielded}

    def set_state(self, state: dict) -> None:
        if "window" not in state or "chunk" not in state:
            raise ValueError(
                f"the checkpoint's input pipeline state {sorted(state)} is from an earlier flaxenc (records one by one); "
                "resume it with that version, or start the run again"
            )
        self._close_reader()
        self._position = {key: state[key] for key in ("epoch", "file", "record")}
        self._start, self._window, self._chunks, self._yielded = dict(self._position), state["window"], [], 0
        if state["window"] >= 0:
            self._window -= 1  # _fill reads window + 1: the same window again, from its start
            self._fill()
            self._yielded = state["chunk"]

    def close(self) -> None:
        self._close_reader()
