"""Data-parallel encode() over 8 fake CPU devices gives the embeddings one device gives, and dropout
draws the masks one device draws.

jax creates 8 CPU devices only when XLA_FLAGS=--xla_force_host_platform_device_count=8 is set
before it is imported, so the check runs in a fresh Python process that writes its findings as
JSON; the test reads that file and asserts on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_default_matmul_precision", "float32")
    import numpy as np
    from flaxenc import SentenceEncoder

    model_path, out_path = sys.argv[1], sys.argv[2]
    words = "the quick brown fox jumps over a lazy dog near river bank while soup simmers slowly".split()
    # 99 sentences of 1 to ~120 tokens, in no particular length order: 3 full batches of 32, then 3.
    sentences = [" ".join(words[(i * 7 + j) % len(words)] for j in range(1 + (i * 37) % 97)) for i in range(99)]
    sentences[5] = ""
    sentences[17] = "Résumé of the café's naïve coöperation, 42 times!"

    devices = jax.devices()
    one = SentenceEncoder.from_pretrained(model_path, devices=devices[:1])
    three = SentenceEncoder.from_pretrained(model_path, devices=devices[:3])
    eight = SentenceEncoder.from_pretrained(model_path, devices=devices)  # all 8
    expected = one.encode(sentences, batch_size=32)
    results = {"n_devices": len(devices), "platform": devices[0].platform, "shape": list(expected.shape)}
    # Three devices get batch_size 20, which is not a multiple of 3.
    for name, encoder, batch_size in (("one", one, 32), ("three", three, 20), ("eight", eight, 32)):
        embeddings = expected if encoder is one else encoder.encode(sentences, batch_size=batch_size)
        leaf = jax.tree_util.tree_leaves(encoder._state)[0]
        results[name] = {
            "mesh_size": int(encoder._mesh.size),
            "param_devices": len(leaf.sharding.device_set),
            "batch_rows": sorted({rows for rows, _, _ in encoder.compiled_shapes}),
            "packed_rows": sorted({packed for _, packed, _ in encoder.compiled_shapes}),
            "max_diff": float(np.abs(embeddings - expected).max()),
            "finite": bool(np.isfinite(embeddings).all()),
        }
    # MiniLM ends in Normalize: every row has norm 1, so no row was lost or left as padding.
    results["norms"] = [float(np.linalg.norm(expected, axis=1).min()), float(np.linalg.norm(expected, axis=1).max())]
    with open(out_path, "w") as f:
        json.dump(results, f)
    """
)


DROPOUT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from flaxenc.modules.dropout import dropout

    x = jnp.ones((8, 4, 64, 64), jnp.float32)  # an attention-probabilities shape, batch first
    key = jax.random.key(7)
    step = jax.jit(lambda x, key: dropout(x, 0.1, key))
    one = np.asarray(step(x, key))
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    sharded = step(jax.device_put(x, NamedSharding(mesh, PartitionSpec("data"))), key)
    with open(sys.argv[1], "w") as f:
        json.dump({"devices": len(sharded.sharding.device_set), "kept": float((one != 0).mean()),
                   "equal": bool(np.array_equal(one, np.asarray(sharded)))}, f)
    """
)


def _run_on_eight_devices(script_text: str, tmp_path: Path, *args: str) -> dict:
    """Runs a script in a fresh Python with 8 fake CPU devices; returns the JSON it wrote to its last argument."""
    script = tmp_path / "multidevice.py"
    script.write_text(script_text)
    out = tmp_path / "result.json"
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    process = subprocess.run(
        [sys.executable, str(script), *args, str(out)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, f"subprocess failed:\n{process.stderr[-4000:]}"
    return json.loads(out.read_text())


def test_dropout_masks_do_not_depend_on_the_mesh(tmp_path):
    """On CPU dropout draws from XLA's Threefry, which each device draws whole: 8 devices, same mask."""
    result = _run_on_eight_devices(DROPOUT_SCRIPT, tmp_path)
    assert result["devices"] == 8
    assert abs(result["kept"] - 0.9) < 0.01  # 131k draws: 5 standard deviations are 0.004
    assert result["equal"]


def test_eight_devices_match_one(minilm_path, tmp_path):
    """MiniLM on 1, 3 and 8 devices: same embeddings (<= 1e-5), each batch and its packed rows split evenly."""
    result = _run_on_eight_devices(SCRIPT, tmp_path, str(minilm_path))

    assert result["n_devices"] == 8
    assert result["platform"] == "cpu"
    assert result["shape"] == [99, 384]
    assert 1 - 1e-5 <= result["norms"][0] <= result["norms"][1] <= 1 + 1e-5
    for name, n in (("one", 1), ("three", 3), ("eight", 8)):
        run = result[name]
        assert run["finite"]
        assert run["max_diff"] <= TOLERANCE, f"{name}: max abs diff {run['max_diff']:.2e} > {TOLERANCE}"
        assert run["mesh_size"] == n
        assert run["param_devices"] == n  # parameters replicated on every device of the mesh
        assert all(rows % n == 0 for rows in run["batch_rows"]), f"{name}: batch rows {run['batch_rows']}"
        assert all(rows % n == 0 for rows in run["packed_rows"]), f"{name}: packed rows {run['packed_rows']}"
    # 99 sentences: three batches of 32 and one of 3, padded to 4 rows (8 on 8 devices). Three
    # devices round batch_size 20 up to 21: four batches of 21 and one of 15, padded to 18.
    assert result["one"]["batch_rows"] == [4, 32]
    assert result["eight"]["batch_rows"] == [8, 32]
    assert result["three"]["batch_rows"] == [18, 21]
