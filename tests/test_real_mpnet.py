"""The real all-mpnet-base-v2 (assembled from its PyPI wheels, bench/packaged_models.py) against PyTorch ST.

On a subset of the STS-B test pairs (a base-size model on two CPU cores): embeddings within 1e-5 and
the same cosine Spearman. The full test set's figures (flaxenc and ST) are in README.md.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import read_stsb
from test_real_model import cosine_spearman

import flaxenc
from bench import packaged_models

PAIRS = 150  # the first pairs of STS-B test: ~300 unique sentences


@pytest.fixture(scope="module")
def mpnet_path():
    if not packaged_models.mpnet_available():
        pytest.skip(packaged_models.NOT_FOUND)
    return packaged_models.mpnet_folder()


@pytest.fixture(scope="module")
def st_mpnet(mpnet_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(mpnet_path), device="cpu")


@pytest.fixture(scope="module")
def mpnet(mpnet_path):
    return flaxenc.SentenceEncoder.from_pretrained(mpnet_path)


def test_mpnet_folder_is_read_as_st_reads_it(mpnet, st_mpnet):
    """Legacy layout, a 2_Normalize entry without its folder, max_seq_length 384; ST's architecture text."""
    from flaxenc.io.st_names import architecture_text

    assert mpnet.max_seq_length == 384
    assert mpnet.model.pooling.modes == ("mean",)
    assert [type(h).__name__ for h in mpnet.model.heads] == ["Normalize"]
    assert mpnet.model.transformer.config.model_type == "mpnet" and mpnet.embedding_dimension == 768
    assert architecture_text(mpnet.model) == str(st_mpnet)


def test_mpnet_matches_st_on_stsb_test(mpnet, st_mpnet):
    first, second, scores = (column[:PAIRS] for column in read_stsb("test"))
    sentences = sorted(set(first) | set(second))
    expected = st_mpnet.encode(sentences, batch_size=32, convert_to_numpy=True)
    actual = mpnet.encode(sentences, batch_size=32)
    max_diff = float(np.abs(actual - expected).max())
    index = {sentence: i for i, sentence in enumerate(sentences)}
    rows1, rows2 = [index[s] for s in first], [index[s] for s in second]
    ours, theirs = (cosine_spearman(e[rows1], e[rows2], scores) for e in (actual, expected))
    print(f"all-mpnet-base-v2, {len(sentences)} STS-B test sentences: max abs diff vs ST {max_diff:.2e}; "
          f"cosine Spearman on {PAIRS} pairs flaxenc {ours:.6f}, ST {theirs:.6f}")
    assert max_diff <= 1e-5
    assert abs(ours - theirs) <= 1e-6
