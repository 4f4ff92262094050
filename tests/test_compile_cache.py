"""JAX's persistent compilation cache: used by encode() when on (the second process loads, not
compiles, and gets the same embeddings), ignored when FLAXENC_COMPILE_CACHE=0."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, SENTENCES, build_st_model

ENCODE = """
import json, sys
import jax
hits = []
jax.monitoring.register_event_listener(lambda event, **kwargs: hits.append(event) if event.endswith("cache_hits") else None)
import flaxenc
encoder = flaxenc.SentenceEncoder.from_pretrained(sys.argv[1])
embeddings = encoder.encode(json.loads(sys.argv[2]), batch_size=4)
print(json.dumps({"hits": len(hits), "embeddings": embeddings.tolist()}))
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory, bert_tokenizer_path):
    return build_st_model(tmp_path_factory.mktemp("cache_model"), bert_tokenizer_path)[0]


def encode_in_a_process(folder, cache_setting: str) -> dict:
    env = {
        **os.environ,
        "FLAXENC_COMPILE_CACHE": cache_setting,
        "PYTHONPATH": str(REPO),
    }
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)  # flaxenc caches even fast compiles
    done = subprocess.run(
        [sys.executable, "-c", ENCODE, str(folder), json.dumps(SENTENCES)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_second_process_loads_programs_from_the_cache(folder, tmp_path):
    cache = tmp_path / "cache"
    first = encode_in_a_process(folder, str(cache))
    written = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert first["hits"] == 0 and written, "the first process compiled and wrote its programs"
    second = encode_in_a_process(folder, str(cache))
    assert second["hits"] >= 1, "the second process compiled again instead of loading"
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == written
    assert np.array_equal(np.array(first["embeddings"]), np.array(second["embeddings"]))


def test_cache_off_writes_nothing(folder, tmp_path, monkeypatch):
    cache = tmp_path / "unused"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))  # where the default folder would be
    result = encode_in_a_process(folder, "0")
    assert result["hits"] == 0 and not cache.exists()
