"""What the benchmark measures: the default (a 2-core CPU in ~10-15 minutes), --quick and --full (a GPU)."""

from __future__ import annotations

import dataclasses

from bench.models import MINILM, MPNET


@dataclasses.dataclass
class Settings:
    # "host" (encode's host side alone, first call with a warm compile cache), "encode", "train";
    # "search" (semantic_search on random embeddings) runs only when named (--only search).
    sections: tuple[str, ...] = ("host", "encode", "train")
    # Models to encode with and train on STS-B: minilm, all-mpnet-base-v2, bert-base, tiny.
    models: tuple[str, ...] = (MINILM, "bert-base")
    # Unique STS-B sentences encoded, per model: a seeded random subset; None: all ~15.5k.
    encode_sentences: dict[str, int | None] = dataclasses.field(
        default_factory=lambda: {MINILM: 512, MPNET: 256, "bert-base": 256}
    )
    # Encode dtypes, per model (bf16 is slow on CPUs without bf16 instructions, ST's most).
    encode_dtypes: dict[str, tuple[str, ...]] = dataclasses.field(
        default_factory=lambda: {MINILM: ("float32", "bfloat16"), "bert-base": ("float32",)}
    )
    encode_batch_sizes: tuple[int, ...] = (32, 128, 512)
    # The host section, with the first model: sentences (None: all ~15.5k unique STS-B sentences),
    # batch sizes, and sentences for the first-call comparison (0 skips it).
    host_sentences: int | None = None
    host_batch_sizes: tuple[int, ...] = (32, 128, 512)
    first_call_sentences: int = 512
    # Timed passes per setting, alternating flaxenc and ST; the fastest counts.
    repeats: int = 2
    train_dtypes: tuple[str, ...] = ("float32",)
    # Pairs per training step, per model.
    train_batch_sizes: dict[str, tuple[int, ...]] = dataclasses.field(
        default_factory=lambda: {MINILM: (32, 128), "bert-base": (32,)}
    )
    # Timed steps per pass (after one warm-up step per batch shape).
    train_steps: int = 3
    # Reference recipe 2 (RoBERTa, max pooling, Dense 153, ContrastiveLoss): size (base, small, tiny),
    # sequence lengths (every row full) and pairs per step; None skips it.
    recipe2_size: str | None = "small"
    recipe2_lengths: tuple[int, ...] = (512, 1280)
    recipe2_batch_size: int = 2
    # Pairs per step of recipe 2 on its own data, MRPC (the recipe's batch is 32).
    recipe2_mrpc_batch_size: int = 32
    # Model of the MFU measurement (bf16 training at 128 tokens); None: bert-base on a GPU, none on a CPU.
    mfu_model: str | None = None
    mfu_batch_size: int = 128
    # The search section: queries over a corpus of random embeddings (dim), top k (bench/search.py).
    search_queries: int = 1000
    search_corpus: int = 100_000
    search_dim: int = 384
    search_top_k: int = 10

    def sentences_for(self, model: str) -> int | None:
        return self.encode_sentences.get(model, self.encode_sentences.get(MINILM))

    def encode_dtypes_for(self, model: str) -> tuple[str, ...]:
        return self.encode_dtypes.get(model, ("float32",))

    def train_batch_sizes_for(self, model: str) -> tuple[int, ...]:
        return self.train_batch_sizes.get(model, (32,))


def quick() -> Settings:
    """A minute or two: MiniLM only, a few hundred sentences, one batch size, short recipe 2."""
    return Settings(
        models=(MINILM,),
        encode_sentences={MINILM: 256},
        encode_dtypes={MINILM: ("float32",)},
        encode_batch_sizes=(32,),
        host_sentences=2000,
        host_batch_sizes=(128,),
        first_call_sentences=128,
        repeats=1,
        train_batch_sizes={MINILM: (32,)},
        train_steps=2,
        recipe2_size="tiny",
        recipe2_lengths=(512,),
        recipe2_batch_size=2,
        recipe2_mrpc_batch_size=8,
    )


def full() -> Settings:
    """The whole matrix, for a GPU: every sentence, both dtypes everywhere, recipe 2 at roberta-base's size."""
    return Settings(
        encode_sentences={MINILM: None, "bert-base": None},
        encode_dtypes={MINILM: ("float32", "bfloat16"), "bert-base": ("float32", "bfloat16")},
        repeats=3,
        train_dtypes=("float32", "bfloat16"),
        train_batch_sizes={MINILM: (32, 128), "bert-base": (32, 128)},
        train_steps=10,
        recipe2_size="base",
        recipe2_batch_size=32,
        mfu_model="bert-base",
    )
