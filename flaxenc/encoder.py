"""SentenceEncoder: tokenizer + module stack + a jitted, bucketed, data-parallel encode()."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from flaxenc import sharding
from flaxenc.io import STFolder, TrainingCard, load_st_folder, resolve_folder, save_st_folder, write_model_card
from flaxenc.packing import pack, pack_length
from flaxenc.sentence_model import SentenceModel

SMALLEST_BUCKET = 16
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
    """One encode batch, its sentences packed (flaxenc.packing) into rows of at least PACK_LENGTH.

    Short sentences share rows of one length instead of each padding to a bucket, so they compute
    on fewer positions and few programs compile (README "Decisions" has the measured counts).
    The batch grows to `rows` sentences by repeating its last (shortest) one; those rows are dropped.
    """
    length = pack_length(max(len(ids) for ids in batch), buckets)
    input_ids = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    for row in range(rows):
        ids = batch[min(row, len(batch) - 1)]
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    packed, (token_index,) = pack([input_ids], [mask], length, row_multiple, pad_id)
    return {"packed": packed, "token_index": token_index, "attention_mask": mask}


def _embed(graphdef, state, batch, prompt_length):
    model = nnx.merge(graphdef, state)
    packed, token_index, mask = batch["packed"], batch["token_index"], batch["attention_mask"]
    return model.embed_packed(packed, token_index, mask, prompt_length=prompt_length)


class SentenceEncoder:
    """A sentence-transformers model in Flax: `SentenceEncoder.from_pretrained(path).encode(texts)`."""

    def __init__(self, folder: STFolder, dtype: jnp.dtype = jnp.float32, devices: Sequence[jax.Device] | None = None):
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
    ) -> SentenceEncoder:
        """Loads an ST folder, a transformers folder, or a hub id (downloaded when online).

        `dtype` is the compute dtype (float32 or bfloat16); parameters stay float32.
        encode() splits each batch over `devices` (default: all local devices).
        """
        dtype = jnp.dtype(dtype)
        if dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
            raise ValueError(f"dtype {dtype} is not supported; use float32, bfloat16 or float16")
        folder = resolve_folder(name_or_path, cache_folder)
        return cls(load_st_folder(folder, dtype=dtype), dtype=dtype, devices=devices)

    # -- the module stack ------------------------------------------------------------------

    @property
    def model(self) -> SentenceModel:
        return self._folder.model

    @model.setter
    def model(self, model: SentenceModel) -> None:
        """Replaces the module stack (after training, say); encode() re-splits it once."""
        self._folder.model = model
        graphdef, state = nnx.split(model)
        self._state = jax.device_put(state, sharding.replicated(self._mesh))
        if getattr(self, "_graphdef", None) != graphdef:  # new parameters alone reuse the compiled programs
            self._graphdef = graphdef
            self._embed = jax.jit(functools.partial(_embed, graphdef))

    @property
    def tokenizer(self):
        return self._folder.tokenizer

    @property
    def max_seq_length(self) -> int:
        return self._folder.max_seq_length

    @property
    def embedding_dimension(self) -> int:
        return self.model.embedding_dimension

    @property
    def prompts(self) -> dict[str, str]:
        return dict(self._folder.st_config.get("prompts") or {})

    @property
    def similarity_fn_name(self) -> str:
        """The similarity the model was trained for (config_sentence_transformers.json), cosine by default."""
        return self._folder.st_config.get("similarity_fn_name") or "cosine"

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
        """Token ids, truncated to max_seq_length, unpadded."""
        encoded = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_seq_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return encoded["input_ids"]

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
    ) -> np.ndarray | jax.Array:
        """Embeds sentences: [N, D] for a list, [D] for a single string (fp32).

        Sentences are sorted by token length, batched longest first and each batch packed into
        rows of a few lengths and counts, so XLA compiles a bounded number of programs. The input
        order is restored.
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
        if prompt is None and prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(f"prompt_name {prompt_name!r} is not one of this model's prompts {sorted(self.prompts)}")
            prompt = self.prompts[prompt_name]
        if not texts:
            empty = np.zeros((0, self.embedding_dimension), np.float32)
            return empty if convert_to_numpy else jnp.asarray(empty)

        prompt_length = 0
        if prompt:
            texts = [prompt + text for text in texts]  # ST prepends the prompt to the text
            prompt_length = self._prompt_length(prompt)
        token_ids = self.tokenize(texts)
        lengths = np.array([len(ids) for ids in token_ids])
        order = np.argsort(-lengths, kind="stable")
        n_devices = self._mesh.size
        batch_size = -(-batch_size // n_devices) * n_devices
        buckets = sequence_buckets(self.max_seq_length)
        pad_id = self.tokenizer.pad_token_id or 0
        batch_shard = sharding.batch_sharding(self._mesh)

        outputs = []
        # Batches of batch_size sentences, longest first, as ST's encode(); each packed.
        for start in tqdm(range(0, len(texts), batch_size), desc="Batches", disable=not show_progress_bar):
            batch = [token_ids[i] for i in order[start : start + batch_size]]
            rows = batch_rows(len(batch), batch_size, n_devices)
            arrays = packed_encode_batch(batch, rows, buckets, n_devices, pad_id)
            self._compiled_shapes.add((rows, *arrays["packed"]["input_ids"].shape))
            embeddings = self._embed(self._state, jax.device_put(arrays, batch_shard), np.int32(prompt_length))
            outputs.append((embeddings, len(batch)))  # dispatch is async: the next batch packs meanwhile

        sorted_embeddings = np.concatenate([np.asarray(e)[:n] for e, n in outputs])
        embeddings = np.empty_like(sorted_embeddings)
        embeddings[order] = sorted_embeddings
        if normalize_embeddings:
            embeddings = embeddings / np.maximum(np.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)
        if single:
            embeddings = embeddings[0]
        return embeddings if convert_to_numpy else jnp.asarray(embeddings)

    def __repr__(self) -> str:
        config = self.model.transformer.config
        heads = ", ".join(type(h).__name__ for h in self.model.heads)
        return (
            f"SentenceEncoder({config.model_type}, layers={config.num_hidden_layers}, hidden={config.hidden_size}, "
            f"pooling={'+'.join(self.model.pooling.modes)}, heads=[{heads}], dim={self.embedding_dimension}, "
            f"max_seq_length={self.max_seq_length}, dtype={self.dtype.name})"
        )


__all__ = ["SentenceEncoder", "batch_rows", "packed_encode_batch", "sequence_buckets"]
