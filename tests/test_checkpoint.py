"""GPTQ checkpoints: save, reload, and compare with the in-memory quantized model."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import astro  # noqa: E402
from astro.checkpoint import QuantLinear, load_quantized, save_quantized  # noqa: E402
from astro.pipeline import quantize_model  # noqa: E402
from test_pipeline import calibration_ids, tiny_llama  # noqa: E402

VOCAB_FOR_TOKENIZER = 96


def reference_dequantize(codes, scales, zeros, g_idx):
    """Slow reference: w[r, c] = (code - zero[r, group(c)]) * scale[r, group(c)]."""
    out, in_ = codes.shape
    weight = np.empty((out, in_), dtype=np.float32)
    for c in range(in_):
        g = int(g_idx[c])
        weight[:, c] = (codes[:, c].astype(np.float32) - zeros[:, g]) * scales[:, g]
    return weight


def fp16_scale_weights(model, result):
    """Set each quantized layer's weight to its dequantization with float16 scales.

    Checkpoints store scales in float16, so this is what a reload must reproduce.
    """
    for name, layer in result.layers.items():
        scales = layer.scales.astype(np.float16).astype(np.float32)
        weight = reference_dequantize(layer.codes, scales, layer.zeros, layer.g_idx)
        model.get_submodule(name).weight.data = torch.from_numpy(weight)


@pytest.mark.parametrize(
    "method, bits, group_size, tie, checkpoint_format",
    [
        ("gptq", 3, 32, True, "v1"),
        ("gptq", 4, 48, False, "v1"),  # 48 leaves a short last group of 16 or 32 columns
        ("rtn", 2, -1, True, "v1"),
        ("gptq", 8, 16, False, "v2"),
    ],
)
def test_reloaded_logits_equal_in_memory(tmp_path, method, bits, group_size, tie, checkpoint_format):
    model = tiny_llama(seed=11, tie=tie)
    ids = calibration_ids()
    result = quantize_model(model, ids, bits=bits, group_size=group_size, method=method,
                            progress=False)
    save_quantized(model, result, tmp_path, checkpoint_format=checkpoint_format)
    fp16_scale_weights(model, result)
    loaded = load_quantized(tmp_path)

    for name in result.layers:
        assert isinstance(loaded.get_submodule(name), QuantLinear), name
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tie
    with torch.no_grad():
        expected = model(ids).logits
        actual = loaded(ids).logits
    # Same float32 weights and the same operations give identical logits.
    assert torch.equal(actual, expected)


def test_quant_linear_weight_matches_reference(tmp_path):
    model = tiny_llama(seed=12, layers=1)
    result = quantize_model(model, calibration_ids(), bits=3, group_size=32, method="gptq",
                            act_order=True, progress=False)
    save_quantized(model, result, tmp_path)
    loaded = load_quantized(tmp_path)
    for name, layer in result.layers.items():
        scales = layer.scales.astype(np.float16).astype(np.float32)
        expected = reference_dequantize(layer.codes, scales, layer.zeros, layer.g_idx)
        actual = loaded.get_submodule(name).dequantized_weight().numpy()
        np.testing.assert_array_equal(actual, expected)


def test_checkpoint_files_and_config(tmp_path):
    model = tiny_llama(seed=13, layers=1)
    result = quantize_model(model, calibration_ids(), bits=4, group_size=32, method="gptq",
                            sym=True, damp=0.02, progress=False)
    save_quantized(model, result, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    qconfig = config["quantization_config"]
    assert qconfig["quant_method"] == "gptq"
    assert qconfig["bits"] == 4 and qconfig["group_size"] == 32
    assert qconfig["sym"] is True and qconfig["desc_act"] is False
    assert qconfig["damp_percent"] == 0.02
    assert qconfig["true_sequential"] is True
    assert qconfig["checkpoint_format"] == "gptq"  # "auto" gives v1 for sym=True
    # gptqmodel reads a top-level "method" key as the quantization method, so
    # astro's own settings must stay under "meta".
    assert "method" not in qconfig
    assert qconfig["meta"]["astro_method"] == "gptq"
    assert qconfig["meta"]["quantizer"] == [f"astro-ptq:{astro.__version__}"]
    assert config["architectures"] == ["LlamaForCausalLM"]

    from safetensors.numpy import load_file

    tensors = load_file(str(tmp_path / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj"
    assert tensors[f"{name}.qweight"].dtype == np.int32
    assert tensors[f"{name}.qweight"].shape == (80 * 4 // 32, 64)
    assert tensors[f"{name}.qzeros"].shape == (3, 64 * 4 // 32)
    assert tensors[f"{name}.scales"].dtype == np.float16
    assert tensors[f"{name}.scales"].shape == (3, 64)
    assert tensors[f"{name}.g_idx"].dtype == np.int32
    assert f"{name}.weight" not in tensors
    assert "lm_head.weight" not in tensors  # tied to the embeddings
    assert "model.embed_tokens.weight" in tensors


def test_tokenizer_saved_with_checkpoint(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(VOCAB_FOR_TOKENIZER)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="t0")
    model = tiny_llama(seed=14, layers=1)
    result = quantize_model(model, calibration_ids(), bits=4, group_size=32, method="rtn",
                            progress=False)
    save_quantized(model, result, tmp_path, tokenizer=tokenizer)
    reloaded = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert reloaded("t5 t7")["input_ids"] == [5, 7]


def test_load_rejects_plain_model_dir(tmp_path):
    model = tiny_llama(seed=15, layers=1)
    model.save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="quantization_config"):
        load_quantized(tmp_path)


def test_load_missing_dir_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_quantized(tmp_path / "absent")


@pytest.mark.parametrize("sym, requested, expected", [
    (True, "auto", "gptq"),
    (False, "auto", "gptq_v2"),
    (False, "v1", "gptq"),
    (True, "v2", "gptq_v2"),
])
def test_checkpoint_format_choice(tmp_path, sym, requested, expected):
    model = tiny_llama(seed=14, layers=1)
    ids = calibration_ids()
    result = quantize_model(model, ids, bits=4, group_size=32, method="astro", sym=sym,
                            beta=3e-4, progress=False)
    save_quantized(model, result, tmp_path, checkpoint_format=requested)
    qconfig = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qconfig["checkpoint_format"] == expected
    assert qconfig["meta"]["astro_method"] == "astro"
    assert qconfig["meta"]["astro_beta"] == 3e-4
    fp16_scale_weights(model, result)
    loaded = load_quantized(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_checkpoint_format_invalid(tmp_path):
    model = tiny_llama(seed=15, layers=1)
    result = quantize_model(model, calibration_ids(), bits=4, group_size=32, method="rtn",
                            progress=False)
    with pytest.raises(ValueError, match="'auto', 'v1' or 'v2'"):
        save_quantized(model, result, tmp_path, checkpoint_format="v3")
