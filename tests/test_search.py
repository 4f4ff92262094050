"""flaxenc.util's semantic_search, paraphrase_mining and community_detection against ST's util, same embeddings.

Random float32 embeddings (no ties in practice): the hits must be ST's, the scores within 1e-6. The
corpus split over 4 fake CPU devices runs in a subprocess (XLA_FLAGS must be set before jax starts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import REPO
from sentence_transformers import util as st_util

from flaxenc import util

TOLERANCE = 1e-6


def assert_same_pairs(actual, expected, tolerance=TOLERANCE):
    """The same [score, i, j] triplets, best first; pairs whose scores differ by float rounding may swap."""
    assert len(actual) == len(expected)
    np.testing.assert_allclose([p[0] for p in actual], [p[0] for p in expected], atol=tolerance)
    theirs = {(i, j): score for score, i, j in expected}
    assert all(abs(theirs[(i, j)] - score) <= tolerance for score, i, j in actual)
    assert all(i < j for _, i, j in actual)


def assert_same_hits(actual, expected):
    assert len(actual) == len(expected)
    for mine, theirs in zip(actual, expected):
        assert [hit["corpus_id"] for hit in mine] == [hit["corpus_id"] for hit in theirs]
        assert all(isinstance(hit["corpus_id"], int) and isinstance(hit["score"], float) for hit in mine)
        # 1e-6 relative: dot scores reach ~20 on these vectors, where one float32 ulp is ~2e-6 (and XLA and
        # torch sum the 24 products in different orders).
        np.testing.assert_allclose([h["score"] for h in mine], [h["score"] for h in theirs], rtol=TOLERANCE, atol=TOLERANCE)


@pytest.fixture(scope="module")
def embeddings():
    rng = np.random.default_rng(0)
    return rng.standard_normal((37, 24)).astype(np.float32), rng.standard_normal((1003, 24)).astype(np.float32)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"query_chunk_size": 7, "corpus_chunk_size": 100, "top_k": 15},
        {"top_k": 1, "corpus_chunk_size": 1},
        {"top_k": 5, "score_function": "dot"},
    ],
)
def test_semantic_search_equals_st(embeddings, options):
    queries, corpus = embeddings
    st_options = dict(options)
    if st_options.get("score_function") == "dot":
        st_options["score_function"] = st_util.dot_score
    expected = st_util.semantic_search(torch.from_numpy(queries), torch.from_numpy(corpus), **st_options)
    assert_same_hits(util.semantic_search(queries, corpus, **options), expected)


def test_semantic_search_inputs(embeddings):
    queries, corpus = embeddings
    # fewer corpus entries than top_k: all of them, as ST; a single query vector; torch and jax inputs
    expected = st_util.semantic_search(torch.from_numpy(queries), torch.from_numpy(corpus[:5]), top_k=10)
    assert_same_hits(util.semantic_search(torch.from_numpy(queries), corpus[:5], top_k=10), expected)
    expected = st_util.semantic_search(torch.from_numpy(queries[0]), torch.from_numpy(corpus))
    import jax.numpy as jnp

    assert_same_hits(util.semantic_search(jnp.asarray(queries[0]), jnp.asarray(corpus)), expected)
    # a custom jax score function (negative euclidean distance), as ST's callable argument
    def neg_distance(a, b):
        return -jnp.sqrt(jnp.maximum(jnp.sum(a * a, 1)[:, None] - 2 * a @ b.T + jnp.sum(b * b, 1)[None], 0))

    actual = util.semantic_search(queries, corpus, top_k=3, score_function=neg_distance)
    expected = st_util.semantic_search(
        torch.from_numpy(queries), torch.from_numpy(corpus), top_k=3, score_function=lambda a, b: -torch.cdist(a, b)
    )
    assert [[h["corpus_id"] for h in row] for row in actual] == [[h["corpus_id"] for h in row] for row in expected]
    with pytest.raises(ValueError, match="unknown score function"):
        util.semantic_search(queries, corpus, score_function="jaccard")


@pytest.mark.parametrize("options", [{}, {"top_k": 5, "max_pairs": 100, "query_chunk_size": 50, "corpus_chunk_size": 70}])
def test_paraphrase_mining_embeddings_equals_st(options):
    embeddings = np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32)
    expected = st_util.paraphrase_mining_embeddings(torch.from_numpy(embeddings), **options)
    assert_same_pairs(util.paraphrase_mining_embeddings(embeddings, **options), expected)


def test_paraphrase_mining_with_models_equals_st(tmp_path, bert_tokenizer_path):
    from conftest import build_st_model

    import flaxenc

    folder, st_model = build_st_model(tmp_path, bert_tokenizer_path)
    encoder = flaxenc.SentenceEncoder.from_pretrained(str(folder))
    words = "a man woman plays eats guitar piano food slowly fast in the park house".split()
    sentences = [" ".join(words[(i * j + 3) % len(words)] for j in range(2 + i % 5)) for i in range(40)]
    expected = st_util.paraphrase_mining(st_model, sentences, top_k=4, max_pairs=30)
    assert_same_pairs(util.paraphrase_mining(encoder, sentences, top_k=4, max_pairs=30), expected, 1e-5)


def clustered(n: int = 600, centres: int = 20, noise: float = 0.3, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((centres, 8))[np.arange(n) % centres] + noise * rng.standard_normal((n, 8))
    return points.astype(np.float32)


@pytest.mark.parametrize("threshold, min_size, batch_size", [(0.9, 5, 64), (0.8, 10, 1024), (0.95, 3, 100), (0.99, 40, 7)])
def test_community_detection_equals_st(threshold, min_size, batch_size):
    embeddings = clustered()
    expected = st_util.community_detection(embeddings, threshold, min_size, batch_size)
    assert util.community_detection(embeddings, threshold, min_size, batch_size) == expected
    assert util.community_detection(embeddings[:3], threshold, 5) == [] == util.community_detection(embeddings[:0])


MULTIDEVICE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_default_matmul_precision", "float32")
    import numpy as np, torch
    from sentence_transformers import util as st_util
    from flaxenc import util

    rng = np.random.default_rng(3)
    queries, corpus = rng.standard_normal((50, 16), np.float32), rng.standard_normal((2001, 16), np.float32)
    results = {"devices": len(jax.devices())}
    for name, options in {"default": {}, "chunked": {"query_chunk_size": 9, "corpus_chunk_size": 301, "top_k": 20}}.items():
        expected = st_util.semantic_search(torch.from_numpy(queries), torch.from_numpy(corpus), **options)
        for devices in (1, 3, 4):
            actual = util.semantic_search(queries, corpus, devices=jax.devices()[:devices], **options)
            results[f"{name}_{devices}"] = {
                "same_ids": [[h["corpus_id"] for h in row] for row in actual] == [[h["corpus_id"] for h in row] for row in expected],
                "max_diff": max(abs(a["score"] - b["score"]) for r, s in zip(actual, expected) for a, b in zip(r, s)),
            }
    embeddings = np.concatenate([corpus[:200], corpus[:200] + 0.05 * rng.standard_normal((200, 16), np.float32)])
    results["paraphrase"] = util.paraphrase_mining_embeddings(embeddings, top_k=3, corpus_chunk_size=33)
    results["paraphrase_st"] = st_util.paraphrase_mining_embeddings(torch.from_numpy(embeddings), top_k=3)
    results["community"] = util.community_detection(embeddings, 0.99, 2, 50) == st_util.community_detection(
        embeddings, 0.99, 2, 50)
    with open(sys.argv[1], "w") as f:
        json.dump(results, f)
    """
)


def test_semantic_search_on_four_devices_equals_st(tmp_path):
    out = tmp_path / "results.json"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, "-c", MULTIDEVICE_SCRIPT, str(out)], check=True, env=env, cwd=REPO, timeout=600)
    results = json.loads(out.read_text())
    assert results.pop("devices") == 4
    assert_same_pairs(results.pop("paraphrase"), results.pop("paraphrase_st"))
    assert results.pop("community")
    for name, result in results.items():
        assert result["same_ids"], name
        assert result["max_diff"] <= TOLERANCE, (name, result)


def test_bench_search_section(tmp_path):
    """`python -m bench --only search` on a small corpus: figures present and sane (timings never asserted)."""
    from bench.cli import main

    path = tmp_path / "bench.json"
    assert main(["--only", "search", "--search-queries", "20", "--search-corpus", "500", "--repeats", "1", "--json", str(path)]) == 0
    (cell,) = json.loads(path.read_text())["search"]
    assert (cell["queries"], cell["corpus"], cell["dim"]) == (20, 500, 384)
    assert cell["same_hits"] == 1.0 and cell["ratio"] > 0
    assert all(cell[side]["per_s"] > 0 and cell[side]["first_call_s"] > 0 for side in ("flaxenc", "st"))
