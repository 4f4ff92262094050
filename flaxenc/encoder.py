"""SentenceEncoder: tokenizer + module stack + a jitted, bucketed, data-parallel encode()."""

from __future__ import annotations

import collections
import functools
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from flax import nnx
from tqdm.auto import tqdm

from flaxenc import compile_cache, sharding
from flaxenc import similarity as similarity_functions
from flaxenc.io import STFolder, TrainingCard, load_st_folder, resolve_folder, save_st_folder, write_model_card
from flaxenc.packing import next_fit, pack_length, packed_rows, token_index, write_rows
from flaxenc.quantization import check_precision, quantize_embeddings
from flaxenc.sentence_model import SentenceModel

SMALLEST_BUCKET = 16
# Threads that tokenize and pack encode() batches ahead of the device (at most one per core), and
# the sentences each tokenizes in one call: small batches are grouped, so the per-call costs of the
# tokenizer and of the thread handoff are paid per few hundred sentences, not per batch.
MAX_HOST_WORKERS = 8
SENTENCES_PER_TASK = 512
BUCKETS_PER_OCTAVE = 4


def sequence_buckets(
    max_seq_length: int, smallest: int = SMALLEST_BUCKET, per_octave: int = BUCKETS_PER_OCTAVE
) -> tuple[int, ...]:
    """Padded lengths from `smallest` to max_seq_length: multiples of 8, `per_octave` per doubling.

    With 4 per octave (16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, ...) a batch pads at most
    a quarter beyond its longest row, where powers of two pad up to double, and compiles grow only
    with the log of max_seq_length (README "Decisions" has the measured token counts).
    """
    buckets = []
    length = smallest
    while length < max_seq_length:
        buckets.append(length)
        octave = 1 << (length.bit_length() - 1)  # the power of two at or below length
        length += max(8, octave // per_octave)
    return (*buckets, max_seq_length)


def batch_rows(n: int, batch_size: int, multiple: int) -> int:
    """Rows to pad a batch of n to: batch_size when full, else the next power of two.

    Always a multiple of `multiple` (the device count), so the batch splits evenly.
    """
    rows = batch_size if n >= batch_size else min(batch_size, 1 << max(0, n - 1).bit_length())
    return -(-rows // multiple) * multiple


def packed_encode_batch(
    batch: Sequence[Sequence[int]], rows: int, buckets: Sequence[int], row_multiple: int, pad_id: int
) -> dict:
    """One encode batch, its sentences (longest first) packed into rows of at least PACK_LENGTH.

    Short sentences share rows of one length instead of each padding to a bucket, so they compute
    on fewer positions and few programs compile (README "Decisions" has the measured counts).
    The batch grows to `rows` sentences with empty ones (no tokens, no packed slots); their
    embeddings are dropped.
    """
    lengths = np.fromiter((len(ids) for ids in batch), np.int64, len(batch))
    ids = np.fromiter(itertools.chain.from_iterable(batch), np.int32, int(lengths.sum()))
    length = pack_length(int(lengths.max()), buckets)
    row, offset = next_fit(lengths, length)
    packed, first_slot = write_rows(ids, lengths, row, offset, packed_rows(int(row[-1]) + 1, row_multiple), length, pad_id)
    lengths, first_slot = (np.pad(x, (0, rows - len(batch))) for x in (lengths, first_slot))
    mask = (np.arange(length) < lengths[:, None]).astype(np.int32)
    return {"packed": packed, "token_index": token_index(first_slot, lengths, length), "attention_mask": mask}


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _ahead(function: Callable, items: Sequence, depth: int, workers: int) -> Iterator:
    """function(item) for each item in order, computed up to `depth` items ahead on `workers` threads."""
    with ThreadPoolExecutor(workers) as pool:
        pending = collections.deque(pool.submit(function, item) for item in items[:depth])
        for item in items[depth:]:
            yield pending.popleft().result()
            pending.append(pool.submit(function, item))
        while pending:
            yield pending.popleft().result()


def _embed(graphdef, state_tree, state_leaves, batch, prompt_length):
    model = nnx.merge(graphdef, jax.tree.unflatten(state_tree, state_leaves))
    packed, token_index, mask = batch["packed"], batch["token_index"], batch["attention_mask"]
    return model.embed_packed(packed, token_index, mask, prompt_length=prompt_length)


def _token_embeddings(graphdef, state_tree, state_leaves, batch):
    # The transformer's output gathered back into the padded layout [B, T, H], as embed_packed
    # pools it: ST's "token_embeddings" (the prompt's tokens included) for the same packed batches
    # as sentence embeddings, so the host path is shared. Packed rows equal padded ones exactly
    # (README "Decisions"), so a separate padded path would only add programs to compile.
    model = nnx.merge(graphdef, jax.tree.unflatten(state_tree, state_leaves))
    packed = batch["packed"]
    rows = model.transformer(packed["input_ids"], None, None, None, segment_ids=packed["segment_ids"], positions=packed["positions"])
    return rows.reshape(-1, rows.shape[-1])[batch["token_index"]].astype(jnp.float32)  # [B, T, H]


def rust_tokenizer(tokenizer, max_length: int) -> tokenizers.Tokenizer:
    """The Rust tokenizer of a transformers fast tokenizer, truncating at max_length, unpadded.

    Its encode_batch_fast gives the ids of `tokenizer(texts, truncation=True, max_length=max_length)`
    without transformers' per-sentence Python conversion (tests/test_parity.py compares them).
    """
    fast = tokenizers.Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    fast.enable_truncation(max_length)
    fast.no_padding()
    return fast


class SentenceEncoder:
    """A sentence-transformers model in Flax: `SentenceEncoder.from_pretrained(path).encode(texts)`."""

    def __init__(self, folder: STFolder, dtype: jnp.dtype = jnp.float32, devices: Sequence[jax.Device] | None = None):
        compile_cache.enable()
        self._folder = folder
        self.dtype = jnp.dtype(dtype)
        self._mesh = sharding.data_mesh(devices)
        self._compiled_shapes: set[tuple[int, int, int]] = set()
        self.model = folder.model

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        dtype: str | jnp.dtype = jnp.float32,
        cache_folder: str | None = None,
        devices: Sequence[jax.Device] | None = None,
        truncate_dim: int | None = None,
    ) -> SentenceEncoder:
        """Loads an ST folder, a transformers folder, or a hub id (downloaded when online).

        `dtype` is the compute dtype (float32 or bfloat16); parameters stay float32.
        encode() splits each batch over `devices` (default: all local devices).
        `truncate_dim` (as ST's SentenceTransformer(truncate_dim=...)) keeps the first dimensions of
        every sentence embedding encode() returns; None: the folder's saved truncate_dim, if any.
        """
        dtype = jnp.dtype(dtype)
        if dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
            raise ValueError(f"dtype {dtype} is not supported; use float32, bfloat16 or float16")
        folder = resolve_folder(name_or_path, cache_folder)
        encoder = cls(load_st_folder(folder, dtype=dtype), dtype=dtype, devices=devices)
        if truncate_dim is not None:
            encoder.truncate_dim = truncate_dim
        return encoder

    # -- the module stack ------------------------------------------------------------------

    @property
    def model(self) -> SentenceModel:
        return self._folder.model

    @model.setter
    def model(self, model: SentenceModel) -> None:
        """Replaces the module stack (after training, say); encode() re-splits it once."""
        self._folder.model = model
        graphdef, state = nnx.split(model)
        # A flat list of arrays: each encode() call passes it without walking the module's tree.
        leaves, state_tree = jax.tree.flatten(jax.device_put(state, sharding.replicated(self._mesh)))
        self._state = leaves
        if getattr(self, "_structure", None) != (graphdef, state_tree):  # new parameters alone reuse the programs
            self._structure = (graphdef, state_tree)
            self._embed = jax.jit(functools.partial(_embed, graphdef, state_tree))
            self._embed_tokens = jax.jit(functools.partial(_token_embeddings, graphdef, state_tree))

    @property
    def tokenizer(self):
        return self._folder.tokenizer

    @property
    def max_seq_length(self) -> int:
        return self._folder.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        """Tokens kept per text (as ST's `model.max_seq_length = n`), at most the model's positions."""
        longest = self.model.transformer.config.max_sequence_length
        if not isinstance(value, (int, np.integer)) or not 1 <= value <= longest:
            raise ValueError(f"max_seq_length must be an integer from 1 to {longest} (the model's positions), got {value!r}")
        self._folder.max_seq_length = int(value)

    @property
    def embedding_dimension(self) -> int:
        return self.model.embedding_dimension

    @property
    def prompts(self) -> dict[str, str]:
        return dict(self._folder.st_config.get("prompts") or {})

    @property
    def default_prompt_name(self) -> str | None:
        """The prompt encode() uses when given neither prompt nor prompt_name (config_sentence_transformers.json)."""
        return self._folder.st_config.get("default_prompt_name")

    @property
    def truncate_dim(self) -> int | None:
        """encode()'s default truncate_dim; saved in config_sentence_transformers.json as ST saves it."""
        return self._folder.st_config.get("truncate_dim")

    @truncate_dim.setter
    def truncate_dim(self, value: int | None) -> None:
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"truncate_dim must be a positive integer or None, got {value!r}")
        if value is None:
            self._folder.st_config.pop("truncate_dim", None)
        else:
            self._folder.st_config["truncate_dim"] = int(value)

    @property
    def similarity_fn_name(self) -> str:
        """The similarity the model was trained for (config_sentence_transformers.json), cosine by default."""
        return self._folder.st_config.get("similarity_fn_name") or "cosine"

    @similarity_fn_name.setter
    def similarity_fn_name(self, name: str) -> None:
        self._folder.st_config["similarity_fn_name"] = similarity_functions.similarity_name(name)

    def similarity(self, embeddings1, embeddings2) -> jax.Array:
        """[N, M] scores of every embeddings1[i] against every embeddings2[j] with the model's
        similarity_fn_name (ST's SentenceTransformer.similarity); a 1-D input is one row."""
        return similarity_functions.similarity(embeddings1, embeddings2, self.similarity_fn_name)

    def similarity_pairwise(self, embeddings1, embeddings2) -> jax.Array:
        """[N] scores of embeddings1[i] against embeddings2[i] (ST's similarity_pairwise)."""
        return similarity_functions.similarity_pairwise(embeddings1, embeddings2, self.similarity_fn_name)

    @property
    def compiled_shapes(self) -> frozenset[tuple[int, int, int]]:
        """The (sentences, packed rows, row length) shapes encode() has compiled, one XLA program each."""
        return frozenset(self._compiled_shapes)

    @property
    def num_compiles(self) -> int:
        return len(self._compiled_shapes)

    def save(self, path: str | os.PathLike, training: TrainingCard | None = None) -> None:
        """Writes an ST folder that sentence_transformers.SentenceTransformer(path) loads.

        Its README.md is a model card in ST's format; `training` adds a training run's section.
        """
        save_st_folder(path, self._folder, training)

    def write_model_card(self, path: str | os.PathLike, training: TrainingCard | None = None) -> None:
        """Rewrites only the README.md of a folder save() wrote (once a run's test results are known, say)."""
        write_model_card(path, self._folder, training)

    # -- encoding ---------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids, truncated to max_seq_length, unpadded: the ids `tokenizer(texts, truncation=True)` gives."""
        return [encoding.ids for encoding in self._fast_tokenizer().encode_batch_fast(list(texts))]

    def _fast_tokenizer(self) -> tokenizers.Tokenizer:
        key = (id(self.tokenizer), self.max_seq_length)
        if getattr(self, "_fast_key", None) != key:
            self._fast, self._fast_key = rust_tokenizer(self.tokenizer, self.max_seq_length), key
        return self._fast

    def _prepare_batches(self, texts: Sequence[str], batch_size: int, batches: Sequence[np.ndarray]) -> list:
        """[(a batch's sentence indices in packed order, its shape, its packed arrays on the devices)]
        for a few batches, whose sentences are tokenized in one call, then ordered longest first
        and packed batch by batch."""
        token_ids = iter(self.tokenize([texts[i] for i in np.concatenate(batches)]))
        buckets, pad_id = sequence_buckets(self.max_seq_length), self.tokenizer.pad_token_id or 0
        prepared = []
        for indices in batches:
            batch = [next(token_ids) for _ in indices]
            by_length = np.argsort([-len(ids) for ids in batch], kind="stable")
            rows = batch_rows(len(indices), batch_size, self._mesh.size)
            arrays = packed_encode_batch([batch[i] for i in by_length], rows, buckets, self._mesh.size, pad_id)
            shape = (rows, *arrays["packed"]["input_ids"].shape)
            prepared.append((indices[by_length], shape, jax.device_put(arrays, sharding.batch_sharding(self._mesh))))
        return prepared

    def _prompt_length(self, prompt: str) -> int:
        # ST's Transformer._get_prompt_length: the prompt's tokens without a trailing special token.
        ids = self.tokenize([prompt])[0]
        return len(ids) - 1 if ids and ids[-1] in self.tokenizer.all_special_ids else len(ids)

    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int = 32,
        normalize_embeddings: bool = False,
        convert_to_numpy: bool = True,
        show_progress_bar: bool = False,
        prompt_name: str | None = None,
        prompt: str | None = None,
        output_value: str = "sentence_embedding",
        precision: str = "float32",
        convert_to_tensor: bool = False,
        truncate_dim: int | None = None,
        ranges: np.ndarray | None = None,
        calibration_embeddings: np.ndarray | None = None,
    ) -> np.ndarray | jax.Array | list[np.ndarray]:
        """Embeds sentences: [N, D] for a list, [D] for a single string (fp32).

        Sentences are sorted by length, batched longest first and each batch packed into rows of a
        few lengths and counts, so XLA compiles a bounded number of programs. The input order is
        restored.

        As ST's encode: `truncate_dim` (default: the model's) keeps the first dimensions, then
        `normalize_embeddings` scales each to length 1, then `precision` ("int8", "uint8",
        "binary", "ubinary"; flaxenc.quantization) quantizes the whole set at once (int8/uint8
        buckets from `ranges` or `calibration_embeddings` when given, else from these embeddings).
        `convert_to_tensor` (or convert_to_numpy=False) returns a jax.Array.
        output_value="token_embeddings" returns a list of [T_i, H] float32 arrays, the
        transformer's outputs for each sentence's tokens without padding (normalize and truncate do
        not apply to them, as in ST).
        """
        single = isinstance(sentences, str)
        if single:
            texts = [sentences]
        elif isinstance(sentences, (Sequence, np.ndarray)) or hasattr(sentences, "__iter__"):
            texts = [str(s) if isinstance(s, np.str_) else s for s in sentences]  # lists, arrays, generators
        else:
            raise TypeError(f"sentences must be a string or a list of strings, not {type(sentences).__name__}")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"sentences[{index}] is a {type(text).__name__}, not a string: {text!r:.80}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if output_value not in ("sentence_embedding", "token_embeddings"):
            raise ValueError(f"output_value must be 'sentence_embedding' or 'token_embeddings', got {output_value!r}")
        check_precision(precision)
        truncate_dim = self.truncate_dim if truncate_dim is None else truncate_dim
        if prompt is None:  # ST's _resolve_prompt: prompt over prompt_name over default_prompt_name
            if prompt_name is not None:
                if prompt_name not in self.prompts:
                    raise ValueError(f"prompt_name {prompt_name!r} is not one of this model's prompts {sorted(self.prompts)}")
                prompt = self.prompts[prompt_name]
            elif self.default_prompt_name is not None:
                prompt = self.prompts.get(self.default_prompt_name)
        tokens = output_value == "token_embeddings"
        if not texts:
            if tokens:
                return []
            empty = np.zeros((0, self.embedding_dimension), np.float32)[:, :truncate_dim]
            empty = quantize_embeddings(empty, precision)
            return empty if convert_to_numpy and not convert_to_tensor else jnp.asarray(empty)

        prompt_length = 0
        if prompt:
            texts = [prompt + text for text in texts]  # ST prepends the prompt to the text
            prompt_length = self._prompt_length(prompt)
        outputs, sentence_orders, masks = [], [], []
        for sentences, arrays in self._prepared_batches(texts, batch_size, show_progress_bar):
            if tokens:
                outputs.append(self._embed_tokens(self._state, arrays))
                masks.append(arrays["attention_mask"])
            else:
                outputs.append(self._embed(self._state, arrays, np.int32(prompt_length)))
            sentence_orders.append(sentences)

        if tokens:
            token_embeddings = [None] * len(texts)
            for sentences, batch_tokens, mask in zip(sentence_orders, jax.device_get(outputs), jax.device_get(masks)):
                for row, sentence in enumerate(sentences):
                    token_embeddings[sentence] = batch_tokens[row, : int(mask[row].sum())]
            if precision != "float32":
                token_embeddings = quantize_embeddings(token_embeddings, precision, ranges, calibration_embeddings)
            return token_embeddings[0] if single else token_embeddings

        embeddings = np.empty((len(texts), self.embedding_dimension), np.float32)
        for sentences, batch_embeddings in zip(sentence_orders, jax.device_get(outputs)):
            embeddings[sentences] = batch_embeddings[: len(sentences)]
        if truncate_dim is not None:
            embeddings = np.ascontiguousarray(embeddings[:, :truncate_dim])  # ST's truncate_embeddings
        if normalize_embeddings:  # torch.nn.functional.normalize, as ST's encode
            embeddings = embeddings / np.maximum(np.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)
        if precision != "float32":
            embeddings = quantize_embeddings(embeddings, precision, ranges, calibration_embeddings)
        if single:
            embeddings = embeddings[0]
        return embeddings if convert_to_numpy and not convert_to_tensor else jnp.asarray(embeddings)

    def _prepared_batches(self, texts: list[str], batch_size: int, show_progress_bar: bool) -> Iterator[tuple[np.ndarray, dict]]:
        """(a batch's sentence indices in packed order, its arrays on the devices), batch after batch.

        Batches of batch_size sentences, longest first by characters, as ST's encode(). Each is
        tokenized (the Rust tokenizer releases the GIL) and packed on background threads while the
        caller dispatches the batches before it; nothing waits on the device until the end.
        """
        n_devices = self._mesh.size
        batch_size = -(-batch_size // n_devices) * n_devices
        order = np.argsort([-len(text) for text in texts], kind="stable")
        batches = [order[start : start + batch_size] for start in range(0, len(texts), batch_size)]
        per_task = -(-SENTENCES_PER_TASK // batch_size)  # batches a worker tokenizes in one call
        tasks = [batches[start : start + per_task] for start in range(0, len(batches), per_task)]
        workers = min(_usable_cores(), MAX_HOST_WORKERS)
        prepared = _ahead(functools.partial(self._prepare_batches, texts, batch_size), tasks, 2 * workers, workers)
        with tqdm(total=len(batches), desc="Batches", disable=not show_progress_bar) as bar:
            for sentences, shape, arrays in itertools.chain.from_iterable(prepared):
                self._compiled_shapes.add(shape)
                yield sentences, arrays
                bar.update()

    def encode_query(self, sentences: str | Sequence[str], prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        """encode() with the model's "query" prompt when given neither prompt nor prompt_name (ST 5+'s
        encode_query: ST models always have a "query" prompt, "" unless saved, so the model's
        default_prompt_name does not apply)."""
        if prompt_name is None and prompt is None:
            prompt = self.prompts.get("query", "")
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def encode_document(self, sentences: str | Sequence[str], prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        """encode() with the model's "document" prompt when given neither prompt nor prompt_name (ST 5+'s
        encode_document: its candidates are document, passage, corpus, and "document" is always
        there, "" unless saved)."""
        if prompt_name is None and prompt is None:
            prompt = self.prompts.get("document", "")
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def __repr__(self) -> str:
        config = self.model.transformer.config
        heads = ", ".join(type(h).__name__ for h in self.model.heads)
        return (
            f"SentenceEncoder({config.model_type}, layers={config.num_hidden_layers}, hidden={config.hidden_size}, "
            f"pooling={'+'.join(self.model.pooling.modes)}, heads=[{heads}], dim={self.embedding_dimension}, "
            f"max_seq_length={self.max_seq_length}, dtype={self.dtype.name})"
        )


__all__ = ["SentenceEncoder", "batch_rows", "packed_encode_batch", "sequence_buckets"]
