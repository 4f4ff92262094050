"""Bad inputs give clear errors: the exception type, and a message naming the file, key or value at fault.

Each bad folder is a copy of a good tiny ST model (BERT + mean pooling + Dense head, built by
transformers + sentence-transformers) with one thing damaged: a tensor, a JSON file, a module type.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SENTENCES, build_st_model
from safetensors.numpy import load_file, save_file

from flaxenc import SentenceEncoder

KEY = "encoder.layer.1.output.dense.weight"  # torch shape [hidden 32, intermediate 37]
DENSE_OUT = 8


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory, bert_tokenizer_path) -> Path:
    """A valid ST folder: tiny random BERT, mean pooling, Dense(32 -> 8, tanh)."""
    folder, _ = build_st_model(
        tmp_path_factory.mktemp("good"), bert_tokenizer_path, heads=(("dense", DENSE_OUT, torch.nn.Tanh(), True),)
    )
    return folder


@pytest.fixture(scope="module")
def encoder(good_folder) -> SentenceEncoder:
    return SentenceEncoder.from_pretrained(good_folder)


@pytest.fixture
def bad_folder(good_folder, tmp_path) -> Path:
    """A fresh copy of the good folder, for one test to damage."""
    return Path(shutil.copytree(good_folder, tmp_path / "model"))


def edit_tensors(path: Path, edit) -> None:
    """Rewrites a model.safetensors file after edit(tensors) changed the dict in place."""
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def edit_json(path: Path, edit) -> None:
    value = json.loads(path.read_text())
    edit(value)
    path.write_text(json.dumps(value))


def load_error(folder, error_type=ValueError) -> str:
    with pytest.raises(error_type) as info:
        SentenceEncoder.from_pretrained(folder)
    return str(info.value)


# -- weights that do not fit the model ------------------------------------------------------


def test_missing_weight_is_named(bad_folder):
    """A tensor deleted from model.safetensors: ValueError naming the file, the key and its shape."""
    weights = bad_folder / "model.safetensors"
    edit_tensors(weights, lambda t: t.pop(KEY))
    message = load_error(bad_folder)
    assert str(weights) in message
    assert f"missing key {KEY} [32, 37]" in message


def test_missing_head_weight_is_named(bad_folder):
    """A tensor deleted from the Dense head's weights: the error names 2_Dense/model.safetensors."""
    weights = bad_folder / "2_Dense" / "model.safetensors"
    edit_tensors(weights, lambda t: t.pop("linear.bias"))
    message = load_error(bad_folder)
    assert str(weights) in message
    assert f"missing key linear.bias [{DENSE_OUT}]" in message


def test_transposed_weight_names_both_shapes(bad_folder):
    """A transposed Linear weight: ValueError naming the key, the shape found and the one expected."""
    edit_tensors(bad_folder / "model.safetensors", lambda t: t.update({KEY: np.ascontiguousarray(t[KEY].T)}))
    message = load_error(bad_folder)
    assert f"wrong shape for {KEY}: [37, 32], expected [32, 37]" in message
    assert "missing key" not in message  # a wrong shape is reported once, not also as missing


def test_resized_weight_names_both_shapes(bad_folder):
    """A bias of the wrong length: ValueError naming the key and both shapes."""
    key = "encoder.layer.0.attention.self.query.bias"
    edit_tensors(bad_folder / "model.safetensors", lambda t: t.update({key: np.zeros(31, np.float32)}))
    message = load_error(bad_folder)
    assert f"wrong shape for {key}: [31], expected [32]" in message


def test_unknown_tensor_is_named(bad_folder):
    """An extra tensor no rule maps: ValueError naming it and its shape."""
    key = "encoder.layer.0.adapter.weight"
    edit_tensors(bad_folder / "model.safetensors", lambda t: t.update({key: np.zeros((4, 4), np.float32)}))
    message = load_error(bad_folder)
    assert f"unexpected key {key} [4, 4]" in message


@pytest.mark.parametrize("buffer", ["embeddings.position_ids", "embeddings.token_type_ids"])
def test_known_buffers_are_accepted(bad_folder, encoder, buffer, caplog):
    """transformers' non-parameter buffers (older checkpoints keep them) load silently, same output."""
    edit_tensors(bad_folder / "model.safetensors", lambda t: t.update({buffer: np.arange(512, dtype=np.int64)[None]}))
    with caplog.at_level(logging.INFO, logger="flaxenc"):
        loaded = SentenceEncoder.from_pretrained(bad_folder)
    assert not [record for record in caplog.records if record.name.startswith("flaxenc")]
    np.testing.assert_array_equal(loaded.encode(SENTENCES[:3]), encoder.encode(SENTENCES[:3]))


def test_all_problems_in_one_error(bad_folder):
    """A missing, a wrong-shaped and an unknown tensor are all listed in one ValueError."""

    def damage(tensors):
        del tensors[KEY]
        tensors["encoder.layer.0.intermediate.dense.weight"] = np.zeros((32, 37), np.float32)  # expected [37, 32]
        tensors["extra.thing"] = np.zeros(3, np.float32)

    edit_tensors(bad_folder / "model.safetensors", damage)
    message = load_error(bad_folder)
    assert "(3 problems)" in message
    assert f"missing key {KEY} [32, 37]" in message
    assert "wrong shape for encoder.layer.0.intermediate.dense.weight: [32, 37], expected [37, 32]" in message
    assert "unexpected key extra.thing [3]" in message


# -- module configuration -----------------------------------------------------------------


def test_unknown_module_type_is_named(bad_folder):
    """A custom module class in modules.json: ValueError naming the type and modules.json."""
    modules = bad_folder / "modules.json"
    edit_json(modules, lambda m: m[1].update(type="my_package.CustomPooling"))
    message = load_error(bad_folder)
    assert str(modules) in message
    assert "'my_package.CustomPooling'" in message


def test_unknown_pooling_mode_is_named(bad_folder):
    """pooling_mode "median": ValueError naming the mode and 1_Pooling/config.json."""
    config = bad_folder / "1_Pooling" / "config.json"
    edit_json(config, lambda c: c.update(pooling_mode="median"))
    message = load_error(bad_folder)
    assert str(config) in message
    assert "'median'" in message


@pytest.mark.parametrize(
    "path, key, value",
    [
        ("1_Pooling/config.json", "pooling_mode_attention", True),
        ("1_Pooling/config.json", "pooling_mode_lasttoken_weighted", 1),
        ("2_Dense/config.json", "use_layer_scale", True),
        ("sentence_bert_config.json", "query_length", 32),
    ],
)
def test_unimplemented_option_set_true_is_named(bad_folder, path, key, value):
    """A config flag flaxenc does not implement, set: ValueError naming the file, the key and its value."""
    config = bad_folder / path
    edit_json(config, lambda c: c.update({key: value}))
    message = load_error(bad_folder)
    assert str(config) in message and f"{key}={value!r}" in message


def test_unimplemented_pooling_flags_set_false_load(bad_folder):
    """Recipe 2's card writes legacy pooling flags, some unknown to flaxenc (and to ST 6.3), all false
    but max: it loads with max pooling, as older ST computed it."""
    from sentence_transformers import SentenceTransformer

    config = bad_folder / "1_Pooling" / "config.json"
    reference = SentenceTransformer(str(bad_folder), device="cpu")
    reference[1].pooling_mode = "max"  # what the legacy flags below select
    legacy = {
        "word_embedding_dimension": 32,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": True,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "pooling_mode_attention": False,
        "pooling_mode_cls_token_first": None,
    }
    config.write_text(json.dumps(legacy))
    encoder = SentenceEncoder.from_pretrained(bad_folder)
    assert encoder.model.pooling.modes == ("max",)
    expected = reference.encode(SENTENCES, convert_to_numpy=True)
    assert np.abs(encoder.encode(SENTENCES) - expected).max() <= 1e-5


@pytest.mark.parametrize("activation", ["torch.nn.modules.activation.Hardshrink", "mylib.Foo"])
def test_unknown_activation_is_named(bad_folder, activation):
    """A Dense activation flaxenc has no JAX version of: ValueError naming it and 2_Dense/config.json."""
    config = bad_folder / "2_Dense" / "config.json"
    edit_json(config, lambda c: c.update(activation_function=activation))
    message = load_error(bad_folder)
    assert str(config) in message
    assert repr(activation) in message


@pytest.mark.parametrize("name", ["modules.json", "config.json", "1_Pooling/config.json", "2_Dense/config.json"])
def test_invalid_json_names_the_file(bad_folder, name):
    """A JSON file cut short: ValueError naming that file, not a bare JSONDecodeError."""
    path = bad_folder / name
    path.write_text(path.read_text()[:12])
    message = load_error(bad_folder)
    assert str(path) in message
    assert "not valid JSON" in message


# -- weights files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: b"this is not a safetensors file" * 40, id="garbage"),
        pytest.param(lambda data: b"", id="empty"),
    ],
)
def test_corrupt_safetensors_names_the_file(bad_folder, damage):
    """A damaged model.safetensors: ValueError naming the file."""
    weights = bad_folder / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    message = load_error(bad_folder)
    assert str(weights) in message
    assert "safetensors" in message


@pytest.mark.parametrize("module", ["", "2_Dense"])
def test_no_weights_file_names_the_folder(bad_folder, module):
    """A module folder without weights: FileNotFoundError naming that folder."""
    (bad_folder / module / "model.safetensors").unlink()
    message = load_error(bad_folder, FileNotFoundError)
    assert f"{bad_folder / module}: no model.safetensors or pytorch_model.bin" in message


def save_as_pytorch_bin(folder: Path) -> Path:
    """Replaces folder/model.safetensors by the same state dict saved with torch.save."""
    weights = folder / "model.safetensors"
    state_dict = {key: torch.from_numpy(value) for key, value in load_file(weights).items()}
    weights.unlink()
    torch.save(state_dict, folder / "pytorch_model.bin")
    return folder / "pytorch_model.bin"


def test_pytorch_bin_loads_like_safetensors(bad_folder, encoder):
    """A folder with pytorch_model.bin instead of model.safetensors gives the same embeddings."""
    save_as_pytorch_bin(bad_folder)
    loaded = SentenceEncoder.from_pretrained(bad_folder)
    np.testing.assert_array_equal(loaded.encode(SENTENCES), encoder.encode(SENTENCES))


def test_pytorch_bin_without_torch_says_torch_is_needed(bad_folder, monkeypatch):
    """Reading pytorch_model.bin with torch unimportable: ImportError naming the file and torch."""
    weights = save_as_pytorch_bin(bad_folder)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    message = load_error(bad_folder, ImportError)
    assert str(weights) in message
    assert "needs torch" in message


def test_corrupt_pytorch_bin_names_the_file(bad_folder):
    """A pytorch_model.bin that is not a pickle: ValueError naming the file."""
    (bad_folder / "model.safetensors").unlink()
    weights = bad_folder / "pytorch_model.bin"
    weights.write_bytes(b"garbage, not a pickle")
    message = load_error(bad_folder)
    assert str(weights) in message


def test_hub_id_offline_says_so(tmp_path):
    """A hub id that is not cached, with HF_HUB_OFFLINE=1: OSError naming the id, the hub and offline."""
    name = "sentence-transformers/this-model-does-not-exist-xyz"
    with pytest.raises(OSError) as info:
        SentenceEncoder.from_pretrained(name, cache_folder=str(tmp_path / "hub_cache"))
    message = str(info.value)
    assert name in message
    assert "hub" in message
    assert "offline" in message.lower()


# -- encode() arguments -------------------------------------------------------------------


def test_encode_rejects_non_string_items(encoder):
    """["a", 3]: TypeError naming index 1 and the type int."""
    with pytest.raises(TypeError, match=r"sentences\[1\] is a int"):
        encoder.encode(["a", 3])


def test_encode_rejects_a_non_sequence(encoder):
    """None: TypeError naming the type."""
    with pytest.raises(TypeError, match="NoneType"):
        encoder.encode(None)


def test_encode_empty_list(encoder):
    """[] gives a float32 numpy array of shape (0, dim), as ST does."""
    embeddings = encoder.encode([])
    assert isinstance(embeddings, np.ndarray)
    assert embeddings.shape == (0, DENSE_OUT)
    assert embeddings.dtype == np.float32


def test_encode_single_string(encoder):
    """A single string gives one vector of shape (dim,), the row a one-item list gives."""
    embedding = encoder.encode(SENTENCES[0])
    assert embedding.shape == (DENSE_OUT,)
    np.testing.assert_allclose(embedding, encoder.encode(SENTENCES[:1])[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("batch_size", [0, -1])
def test_encode_rejects_bad_batch_size(encoder, batch_size):
    """batch_size < 1: ValueError naming batch_size and the value."""
    with pytest.raises(ValueError, match=f"batch_size must be positive, got {batch_size}"):
        encoder.encode(["a"], batch_size=batch_size)


def test_missing_local_folder_says_so(tmp_path):
    """A path that does not exist is a missing folder, not a hub id."""
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        SentenceEncoder.from_pretrained(missing)


def test_single_problem_is_singular(bad_folder):
    weights = bad_folder / "2_Dense" / "model.safetensors"
    tensors = load_file(weights)
    del tensors["linear.bias"]
    save_file(tensors, weights)
    assert "(1 problem)" in load_error(bad_folder)


def test_encode_accepts_arrays_and_generators(encoder):
    """A numpy array of strings or a generator encodes like the list, as in ST."""
    expected = encoder.encode(SENTENCES[:3])
    np.testing.assert_array_equal(encoder.encode(np.array(SENTENCES[:3])), expected)
    np.testing.assert_array_equal(encoder.encode(s for s in SENTENCES[:3]), expected)
