"""encode()'s ST options against sentence-transformers 6: precision (quantization), truncate_dim,
token embeddings, convert_to_tensor, encode_query / encode_document, similarity functions.

One tiny random BERT (MiniLM's tokenizer) built and saved by ST serves every test; fp32.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch
from conftest import SENTENCES, build_st_model
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import quantization as st_quantization
from sentence_transformers.util.similarity import SimilarityFunction

import flaxenc
from flaxenc.quantization import quantize_embeddings

TOLERANCE = 1e-5
PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
TEXTS = [*SENTENCES, *(f"sentence {i} about topic {i % 7} with {'many ' * (i % 5)}words" for i in range(40))]


@pytest.fixture(scope="module")
def model(tmp_path_factory, bert_tokenizer_path):
    """(ST folder, ST model, flaxenc encoder) of one tiny random BERT with query/document prompts."""
    folder, st_model = build_st_model(tmp_path_factory.mktemp("options"), bert_tokenizer_path, hidden_size=48)
    config_path = folder / "config_sentence_transformers.json"
    config = json.loads(config_path.read_text())
    config["prompts"] = {"query": "query: ", "document": "passage: ", "other": "other text: "}
    config_path.write_text(json.dumps(config))
    st_model = SentenceTransformer(str(folder), device="cpu")
    st_model.eval()
    return folder, st_model, flaxenc.SentenceEncoder.from_pretrained(folder)


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# -- quantize_embeddings ----------------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS)
def test_quantize_embeddings_bit_exact_with_st(precision):
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(300, 37)).astype(np.float32)
    embeddings[::7, 3] = 0.0  # exact zeros: binary's threshold is x > 0
    calibration = rng.normal(scale=0.8, size=(500, 37)).astype(np.float32)
    ranges = np.vstack([calibration.min(0) - 0.1, calibration.max(0)]).astype(np.float32)
    ranges[:, 5] = 0.25  # a zero-width range: ST's step of 1
    cases = [{}, {"calibration_embeddings": calibration}, {"ranges": ranges}]
    for kwargs in cases:
        expected = st_quantization.quantize_embeddings(embeddings, precision=precision, **kwargs)
        actual = quantize_embeddings(embeddings, precision, **kwargs)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, kwargs
        np.testing.assert_array_equal(actual, expected)
    # a list of token-embedding matrices shares one set of buckets
    matrices = [embeddings[:10], embeddings[10:13], embeddings[13:40]]
    for kwargs in cases[:2]:
        expected = st_quantization.quantize_embeddings(matrices, precision=precision, **kwargs)
        actual = quantize_embeddings(matrices, precision, **kwargs)
        for a, e in zip(actual, expected, strict=True):
            np.testing.assert_array_equal(a, e)


def test_quantize_errors():
    with pytest.raises(ValueError, match="single embedding"):
        quantize_embeddings(np.ones((1, 8), np.float32), "int8")
    with pytest.raises(ValueError, match="not supported"):
        quantize_embeddings(np.ones((2, 8), np.float32), "int4")
    with pytest.raises(ValueError, match="floats"):
        quantize_embeddings(np.ones((2, 8), np.int8), "binary")


# -- encode(precision=...) --------------------------------------------------------------------


def _assert_quantized_equal(actual, expected, floats, precision, ranges=None):
    """Bit-exact, except where the float embedding lies within 1e-5 of a bucket edge (flaxenc and
    torch agree to ~1e-6, so such a value may round either way): there at most one bucket apart."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if precision.endswith("binary"):
        assert np.abs(floats).min() > 1e-5, "an embedding at the binary threshold; change the test texts"
        np.testing.assert_array_equal(actual, expected)
        return
    starts, steps = ranges[0], np.where(ranges[1] == ranges[0], 1, (ranges[1] - ranges[0]) / 255)
    position = (floats - starts) / steps
    near_edge = np.abs(position - np.round(position)) < 1e-5 / steps
    differ = actual != expected
    assert not (differ & ~near_edge).any()
    assert np.abs(actual.astype(np.int16) - expected.astype(np.int16)).max(initial=0) <= 1


@pytest.mark.parametrize("precision", PRECISIONS)
def test_encode_precision_as_st(model, precision):
    folder, st_model, encoder = model
    floats = st_model.encode(TEXTS, batch_size=8)
    assert max_diff(encoder.encode(TEXTS, batch_size=8), floats) <= TOLERANCE
    expected = st_model.encode(TEXTS, batch_size=8, precision=precision)
    actual = encoder.encode(TEXTS, batch_size=8, precision=precision)
    if precision == "float32":
        assert max_diff(actual, expected) <= TOLERANCE
        return
    ranges = np.vstack([floats.min(0), floats.max(0)])
    _assert_quantized_equal(actual, expected, floats, precision, ranges)
    # with calibration (flaxenc's extension of encode; ST quantizes afterwards)
    calibration = floats[::2]
    calibrated = encoder.encode(TEXTS, batch_size=8, precision=precision, calibration_embeddings=calibration)
    expected = st_quantization.quantize_embeddings(floats, precision, calibration_embeddings=calibration)
    _assert_quantized_equal(calibrated, expected, floats, precision, np.vstack([calibration.min(0), calibration.max(0)]))


# -- truncate_dim, normalize, convert_to_tensor -----------------------------------------------


def test_truncate_dim_as_st(model, tmp_path):
    folder, st_model, encoder = model
    for kwargs in ({"truncate_dim": 16}, {"truncate_dim": 16, "normalize_embeddings": True}, {"normalize_embeddings": True}):
        expected = st_model.encode(TEXTS, batch_size=8, **kwargs)
        actual = encoder.encode(TEXTS, batch_size=8, **kwargs)
        assert actual.shape == expected.shape, kwargs
        assert max_diff(actual, expected) <= TOLERANCE, kwargs
    # the model-level default, as SentenceTransformer(path, truncate_dim=...), saved with the model
    truncated = flaxenc.SentenceEncoder.from_pretrained(folder, truncate_dim=8)
    st_truncated = SentenceTransformer(str(folder), device="cpu", truncate_dim=8)
    expected = st_truncated.encode(TEXTS, batch_size=8, normalize_embeddings=True)
    actual = truncated.encode(TEXTS, batch_size=8, normalize_embeddings=True)
    assert actual.shape == (len(TEXTS), 8) and max_diff(actual, expected) <= TOLERANCE
    assert truncated.encode(TEXTS[0], truncate_dim=12).shape == (12,)  # the call's value wins
    truncated.save(tmp_path / "saved")
    assert SentenceTransformer(str(tmp_path / "saved"), device="cpu").truncate_dim == 8
    assert flaxenc.SentenceEncoder.from_pretrained(tmp_path / "saved").truncate_dim == 8
    assert encoder.truncate_dim is None
    with pytest.raises(ValueError, match="truncate_dim"):
        truncated.truncate_dim = 0


def test_convert_to_tensor(model):
    _, st_model, encoder = model
    tensor = encoder.encode(TEXTS[:5], convert_to_tensor=True)
    assert isinstance(tensor, jax.Array) and tensor.shape == (5, encoder.embedding_dimension)
    assert max_diff(tensor, st_model.encode(TEXTS[:5])) <= TOLERANCE
    assert isinstance(encoder.encode(TEXTS[:5], convert_to_tensor=True, precision="ubinary"), jax.Array)
    assert isinstance(encoder.encode("one", convert_to_tensor=True), jax.Array)


# -- token embeddings -------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [None, "query: "])
def test_token_embeddings_as_st(model, prompt):
    _, st_model, encoder = model
    expected = st_model.encode(TEXTS, batch_size=8, output_value="token_embeddings", prompt=prompt)
    actual = encoder.encode(TEXTS, batch_size=8, output_value="token_embeddings", prompt=prompt)
    assert isinstance(actual, list) and len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert isinstance(a, np.ndarray) and a.dtype == np.float32
        assert a.shape == tuple(e.shape)
        assert max_diff(a, e.numpy()) <= TOLERANCE
    single = encoder.encode(TEXTS[2], output_value="token_embeddings")
    assert max_diff(single, st_model.encode(TEXTS[2], output_value="token_embeddings").numpy()) <= TOLERANCE


# -- prompts ----------------------------------------------------------------------------------


def test_encode_query_and_document_as_st(model):
    _, st_model, encoder = model
    for method in ("encode_query", "encode_document", "encode"):
        for kwargs in ({}, {"prompt_name": "other"}, {"prompt": "custom: "}):
            expected = getattr(st_model, method)(TEXTS, batch_size=8, **kwargs)
            actual = getattr(encoder, method)(TEXTS, batch_size=8, **kwargs)
            assert max_diff(actual, expected) <= TOLERANCE, (method, kwargs)
    # the prompts change the embeddings
    assert max_diff(encoder.encode_query(TEXTS[:3]), encoder.encode(TEXTS[:3])) > 1e-3


def test_default_prompt_name_as_st(tmp_path, bert_tokenizer_path):
    """default_prompt_name applies to encode(), not to encode_query / encode_document (their own
    prompt, "" when the model has none)."""
    folder, _ = build_st_model(tmp_path, bert_tokenizer_path)
    config_path = folder / "config_sentence_transformers.json"
    config = json.loads(config_path.read_text())
    config.update(prompts={"query": "q: ", "other": "other text: "}, default_prompt_name="other")
    config_path.write_text(json.dumps(config))
    st_model = SentenceTransformer(str(folder), device="cpu")
    encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
    for method in ("encode", "encode_query", "encode_document"):
        expected = getattr(st_model, method)(TEXTS[:10], batch_size=4)
        assert max_diff(getattr(encoder, method)(TEXTS[:10], batch_size=4), expected) <= TOLERANCE, method


# -- similarity -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cosine", "dot", "euclidean", "manhattan"])
def test_similarity_as_st(model, name):
    _, _, encoder = model
    # Past 25 rows torch.cdist takes its matmul path, which is off by up to ~3e-3 at distance 0
    # (flaxenc's distances, from the differences, are exact there): no text is in both sets.
    a = encoder.encode(TEXTS[:30], batch_size=8)
    b = encoder.encode(TEXTS[30:] + TEXTS[:1], batch_size=8)[:-1]
    encoder.similarity_fn_name = name
    try:
        scores = encoder.similarity(a, b)
        pairwise = encoder.similarity_pairwise(a[: len(b)], b)
        single = encoder.similarity(a[0], b)
    finally:
        encoder.similarity_fn_name = "cosine"
    assert isinstance(scores, jax.Array) and scores.shape == (30, len(b))
    # ST's functions on float64 copies give the exact scores; on float32 they round more than
    # flaxenc (measured: dot 1.3e-4 off at scores ~500, euclidean 1.4e-5 off, flaxenc 8e-5 and 9e-7).
    as_torch = lambda x: torch.from_numpy(np.asarray(x, np.float64))  # noqa: E731
    expected = SimilarityFunction.to_similarity_fn(name)(as_torch(a), as_torch(b)).numpy()
    expected_pairwise = SimilarityFunction.to_similarity_pairwise_fn(name)(as_torch(a[: len(b)]), as_torch(b)).numpy()
    expected32 = SimilarityFunction.to_similarity_fn(name)(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    scale = max(1.0, float(np.abs(expected).max()))  # dot and distances reach tens: 1e-6 relative to that
    assert max_diff(scores, expected) <= 1e-6 * scale, name
    assert max_diff(scores, expected32) <= 1e-5 * scale, name
    assert max_diff(pairwise, expected_pairwise) <= 1e-6 * scale, name
    assert single.shape == (1, len(b)) and max_diff(single[0], expected[0]) <= 1e-6 * scale
    # lists of vectors and torch tensors are accepted, as ST's
    assert max_diff(flaxenc.similarity.similarity(list(a[:3]), torch.from_numpy(b[:4]), name), expected[:3, :4]) <= 1e-6 * scale


def test_similarity_follows_the_saved_name(tmp_path, bert_tokenizer_path):
    folder, _ = build_st_model(tmp_path, bert_tokenizer_path)
    config_path = folder / "config_sentence_transformers.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "similarity_fn_name": "manhattan"}))
    st_model = SentenceTransformer(str(folder), device="cpu")
    encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
    a, b = encoder.encode(TEXTS[:4]), encoder.encode(TEXTS[4:9])
    assert encoder.similarity_fn_name == "manhattan"
    assert max_diff(encoder.similarity(a, b), st_model.similarity(a, b).numpy()) <= 1e-5
    with pytest.raises(ValueError, match="not supported"):
        encoder.similarity_fn_name = "maxsim"
