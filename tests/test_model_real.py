"""End to end on the real default model (SmolLM2-135M-Instruct from its PyPI wheel).

Sizes are cut to CI scale: 8 calibration windows of 256 tokens, 2 held-out
windows of 512 tokens, and the quantization test quantizes the first
QUANTIZED_BLOCKS of the 30 blocks (the rest stay float). Tests skip, with the reason, only when the package
index cannot be reached.
"""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

from astro import assets, data  # noqa: E402
from astro.evaluate import perplexity  # noqa: E402
from astro.models import load_model  # noqa: E402
from astro.pipeline import quantize_model  # noqa: E402

pytestmark = pytest.mark.slow

EVAL_WINDOWS = 2
EVAL_SEQLEN = 512
QUANTIZED_BLOCKS = 8


@pytest.fixture(scope="module")
def smollm():
    try:
        path = assets.default_model_path()
        wiki = assets.text_path("wiki")
    except assets.DownloadError as error:
        pytest.skip(f"package index unreachable: {error}")
    model, tokenizer = load_model(path)
    calibration_docs, eval_docs = data.split_documents(data.read_documents(wiki))
    eval_ids = data.tokenize_documents(tokenizer, eval_docs)[: EVAL_WINDOWS * EVAL_SEQLEN]
    calibration = data.calibration_windows(
        data.tokenize_documents(tokenizer, calibration_docs), num_windows=8, seqlen=256, seed=0
    )
    float_state = {k: v.clone() for k, v in model.state_dict().items()}
    return model, tokenizer, calibration, eval_ids, float_state


def test_gguf_is_smollm2_135m(smollm):
    model, tokenizer, _, _, _ = smollm
    config = model.config
    assert config.model_type == "llama"
    assert config.num_hidden_layers == 30
    assert config.hidden_size == 576
    assert config.intermediate_size == 1536
    assert config.num_attention_heads == 9
    assert config.num_key_value_heads == 3
    assert config.vocab_size == 49152
    assert model.lm_head.weight is model.model.embed_tokens.weight
    parameters = sum(p.numel() for p in model.parameters())
    assert 134_000_000 < parameters < 135_000_000

    text = "Quantization maps weights to a few levels."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_float_perplexity_plausible(smollm):
    model, _, _, eval_ids, float_state = smollm
    model.load_state_dict(float_state)
    result = perplexity(model, eval_ids, seqlen=EVAL_SEQLEN)
    # A 135M model scores in the teens on Wikipedia; a wrong q/k row order
    # or a broken dequantization would land in the hundreds.
    assert 5.0 < result["ppl"] < 30.0, result


def test_gptq_beats_rtn_at_w3(smollm):
    model, _, calibration, eval_ids, float_state = smollm
    scores = {}
    model.load_state_dict(float_state)
    scores["float"] = perplexity(model, eval_ids, seqlen=EVAL_SEQLEN)["ppl"]
    for method in ("rtn", "gptq"):
        model.load_state_dict(float_state)
        result = quantize_model(model, calibration, bits=3, group_size=128, method=method,
                                num_blocks=QUANTIZED_BLOCKS, progress=False)
        assert len(result.layers) == QUANTIZED_BLOCKS * 7
        scores[method] = perplexity(model, eval_ids, seqlen=EVAL_SEQLEN)["ppl"]
    model.load_state_dict(float_state)

    assert all(math.isfinite(v) for v in scores.values()), scores
    assert scores["float"] < scores["gptq"] < scores["rtn"], scores
