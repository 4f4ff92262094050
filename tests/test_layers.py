"""Layer-level parity: pooling on random arrays against ST's Pooling, one encoder layer against
transformers' BertLayer, and the position ids of RoBERTa."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from flaxenc.key_tables import torch_to_flax
from flaxenc.models import BertModel, EncoderConfig
from flaxenc.models.bert import RULES as BERT_RULES
from flaxenc.models.bert import attention_mask_4d
from flaxenc.models.roberta import roberta_position_ids
from flaxenc.modules import POOLING_MODES, pool
from flaxenc.sentence_model import abstract_params, merge_params


def random_batch(seed=0, batch=6, length=9, dim=8):
    rng = np.random.default_rng(seed)
    tokens = rng.normal(size=(batch, length, dim)).astype(np.float32)
    lengths = [length, 1, 4, 7, 2, length - 1][:batch]
    mask = np.zeros((batch, length), np.int64)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return tokens, mask


@pytest.mark.parametrize("prompt_length", [None, 2])
@pytest.mark.parametrize("modes", [(m,) for m in POOLING_MODES] + [POOLING_MODES])
def test_pool_matches_st_pooling(modes, prompt_length):
    from sentence_transformers.sentence_transformer.modules import Pooling

    tokens, mask = random_batch()
    st_pooling = Pooling(tokens.shape[-1], modes if len(modes) > 1 else modes[0], include_prompt=prompt_length is None)
    features = {"token_embeddings": torch.from_numpy(tokens), "attention_mask": torch.from_numpy(mask)}
    if prompt_length is not None:
        features["prompt_length"] = prompt_length
    expected = st_pooling(features)["sentence_embedding"].numpy()
    actual = np.asarray(pool(tokens, mask, modes, prompt_length))
    finite = np.isfinite(expected)  # max over a fully excluded row is -inf in both
    np.testing.assert_array_equal(np.isfinite(actual), finite)
    assert np.abs(actual[finite] - expected[finite]).max() <= 1e-6


def test_roberta_position_ids():
    pad = 1
    ids = np.array([[0, 5, 6, 2, pad, pad], [0, 7, 2, pad, pad, pad]])
    expected = transformers.models.roberta.modeling_roberta.RobertaEmbeddings.create_position_ids_from_input_ids(
        torch.from_numpy(ids), pad
    ).numpy()
    np.testing.assert_array_equal(np.asarray(roberta_position_ids(ids, pad)), expected)


def test_first_layer_and_embeddings_match_transformers():
    """Embeddings and the first encoder layer on their own, against transformers' modules."""
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=4, intermediate_size=20
    )
    hf_model = transformers.BertModel(hf_config, add_pooling_layer=False).eval()
    config = EncoderConfig.from_dict(hf_config.to_dict())
    graphdef, state, shapes = abstract_params(lambda: BertModel(config, rngs=nnx.Rngs(0)))
    tensors = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    ours = merge_params(graphdef, state, torch_to_flax(BERT_RULES, tensors, shapes, "test"))

    ids = np.array([[2, 7, 9, 3, 0, 0], [2, 11, 3, 0, 0, 0]])
    mask = (ids != 0).astype(np.int64)
    with torch.no_grad():
        hf_embedded = hf_model.embeddings(input_ids=torch.from_numpy(ids))
        hf_out = hf_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    embedded = ours.embeddings(ids, np.broadcast_to(np.arange(6), ids.shape), np.zeros_like(ids))
    assert np.abs(np.asarray(embedded) - hf_embedded.numpy()).max() <= 1e-6
    layer_out = ours.layers[0](embedded, attention_mask_4d(mask, None))
    real = mask.astype(bool)  # transformers' pad rows differ only in what nobody reads
    assert np.abs(np.asarray(layer_out)[real] - hf_out.numpy()[real]).max() <= 1e-5


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_keeps_one_minus_rate_and_scales(rate):
    """Dropout as torch's: each element kept with probability 1 - rate, kept ones scaled by 1/(1 - rate).

    3M elements, two to a random word; different keys give different masks.
    """
    from flaxenc.modules.dropout import dropout

    x = jnp.ones((3, 1000, 1000), jnp.float32)
    out = np.asarray(dropout(x, rate, jax.random.key(0)))
    kept = out != 0
    assert np.allclose(out[kept], 1 / (1 - rate), rtol=1e-7)
    # 3M Bernoulli draws: the kept share is within 5 standard deviations of 1 - rate, in each part.
    for part in (kept[0], kept[2], kept):
        sd = np.sqrt(rate * (1 - rate) / part.size)
        assert abs(part.mean() - (1 - rate)) < 5 * sd
    other = np.asarray(dropout(x, rate, jax.random.key(1))) != 0
    assert (other != kept).mean() > rate * (1 - rate)  # independent masks differ in ~2 rate (1 - rate) of places
    assert np.array_equal(np.asarray(dropout(x, rate, None)), np.asarray(x))
