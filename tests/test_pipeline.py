"""Model pipeline on a tiny randomly initialized Llama (no downloads)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import astro  # noqa: E402
from astro.pipeline import SUBLAYER_GROUPS, quantize_model  # noqa: E402

VOCAB = 96
HIDDEN = 64
INTERMEDIATE = 80  # not a multiple of the group size: exercises a short last group


def tiny_llama(seed=0, layers=2, tie=True):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, tie_word_embeddings=tie, pad_token_id=0,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    # Default init gives tiny, nearly uniform weights; widen them so that
    # quantization errors reach the logits.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    return model


def calibration_ids(n=6, length=24, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (n, length), generator=generator)


def linear_names(model):
    return [
        f"model.layers.{i}.{name}"
        for i in range(model.config.num_hidden_layers)
        for group in SUBLAYER_GROUPS
        for name in group
    ]


class HessianRecorder:
    """Wrap astro.quantize_layer and keep a copy of each Hessian it receives."""

    def __init__(self):
        self.matrices = []
        self.samples = []
        self.real = astro.quantize_layer

    def __call__(self, W, X, **kwargs):
        self.matrices.append(None if X is None else X.matrix.astype(np.float64).copy())
        self.samples.append(None if X is None else X.num_samples)
        return self.real(W, X, **kwargs)


def reference_hessians(model, batches):
    """Return {linear name: (H, n)} from inputs of ``model`` itself, padding dropped."""
    sums, counts, hooks = {}, {}, []
    current = {}
    for name in linear_names(model):
        module = model.get_submodule(name)

        def hook(mod, args, name=name):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            mask = current["mask"]
            if mask is not None:
                x = x[mask.reshape(-1).bool()]
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]

        hooks.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        for ids, mask in batches:
            current["mask"] = mask
            model(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    return {k: ((2.0 / counts[k]) * sums[k].numpy(), counts[k]) for k in sums}


def assert_hessians_close(recorded, reference):
    # Float32 accumulation of a few hundred tokens versus a float64 sum.
    scale = np.abs(reference).max()
    np.testing.assert_allclose(recorded, reference, rtol=0, atol=2e-5 * scale)


def test_hessians_come_from_quantized_prefix(monkeypatch):
    # With true-sequential order, every layer's input at quantization time is
    # exactly its input in the final quantized model.
    model = tiny_llama()
    ids = calibration_ids()
    recorder = HessianRecorder()
    monkeypatch.setattr(astro, "quantize_layer", recorder)
    result = quantize_model(model, ids, bits=3, group_size=32, method="gptq",
                            batch_size=4, progress=False)

    names = list(result.layers)
    assert names == linear_names(model)
    reference = reference_hessians(model, [(ids[:4], None), (ids[4:], None)])
    for name, matrix, samples in zip(names, recorder.matrices, recorder.samples):
        ref_matrix, ref_count = reference[name]
        assert samples == ref_count == ids.numel(), name
        assert_hessians_close(matrix, ref_matrix)


def test_padding_excluded_from_hessians(monkeypatch):
    model = tiny_llama(seed=3)
    lengths = [24, 7, 15, 1, 20]
    generator = torch.Generator().manual_seed(5)
    sequences = [torch.randint(1, VOCAB, (n,), generator=generator) for n in lengths]
    recorder = HessianRecorder()
    monkeypatch.setattr(astro, "quantize_layer", recorder)
    result = quantize_model(model, sequences, bits=4, group_size=32, method="gptq",
                            batch_size=2, progress=False)
    assert result.calibration_tokens == sum(lengths)

    batches = []
    for start in range(0, len(sequences), 2):
        chunk = sequences[start:start + 2]
        width = max(len(s) for s in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, s in enumerate(chunk):
            ids[row, : len(s)] = s
            mask[row, : len(s)] = 1
        batches.append((ids, mask))
    reference = reference_hessians(model, batches)
    for name, matrix, samples in zip(result.layers, recorder.matrices, recorder.samples):
        ref_matrix, ref_count = reference[name]
        assert samples == ref_count == sum(lengths), name
        assert_hessians_close(matrix, ref_matrix)


def test_not_true_sequential_uses_float_block(monkeypatch):
    float_model = tiny_llama(seed=4, layers=1)
    model = tiny_llama(seed=4, layers=1)
    ids = calibration_ids()
    reference = reference_hessians(float_model, [(ids, None)])
    recorder = HessianRecorder()
    monkeypatch.setattr(astro, "quantize_layer", recorder)
    result = quantize_model(model, ids, bits=3, group_size=32, method="gptq",
                            true_sequential=False, batch_size=6, progress=False)
    assert result.config["true_sequential"] is False
    for name, matrix in zip(result.layers, recorder.matrices):
        assert_hessians_close(matrix, reference[name][0])


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_weights_replaced_by_dequantized(method):
    model = tiny_llama(seed=2, tie=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = quantize_model(model, calibration_ids(), bits=3, group_size=32,
                            method=method, progress=False)
    after = model.state_dict()
    quantized = {f"{name}.weight" for name in result.layers}
    assert len(quantized) == 7 * model.config.num_hidden_layers
    for name, layer in result.layers.items():
        np.testing.assert_array_equal(after[f"{name}.weight"].numpy(), layer.dequantize())
        assert layer.bits == 3 and layer.method == method
    for key, value in before.items():
        if key not in quantized:
            assert torch.equal(after[key], value), f"{key} changed"


def test_rtn_matches_layerwise_rtn():
    model = tiny_llama(seed=6)
    originals = {n: model.get_submodule(n).weight.detach().clone() for n in linear_names(model)}
    result = quantize_model(model, calibration_ids(), bits=2, group_size=16,
                            method="rtn", progress=False)
    for name, weight in originals.items():
        expected = astro.quantize_layer(weight, None, bits=2, group_size=16, method="rtn",
                                        compute_error=False)
        np.testing.assert_array_equal(result.layers[name].codes, expected.codes)
        np.testing.assert_array_equal(result.layers[name].scales, expected.scales)


def logit_error(model, reference_logits, ids):
    with torch.no_grad():
        return float(((model(ids).logits - reference_logits) ** 2).mean())


def test_gptq_closer_to_float_than_rtn():
    ids = calibration_ids(n=16, length=32)
    float_model = tiny_llama(seed=7)
    with torch.no_grad():
        reference = float_model(ids).logits
    errors = {}
    for method in ("rtn", "gptq"):
        model = tiny_llama(seed=7)
        quantize_model(model, ids, bits=3, group_size=32, method=method, progress=False)
        errors[method] = logit_error(model, reference, ids)
    assert errors["gptq"] < errors["rtn"], errors


def test_astro_method_runs():
    pytest.importorskip("astro.regularize")
    model = tiny_llama(seed=8, layers=1)
    result = quantize_model(model, calibration_ids(), bits=3, group_size=32,
                            method="astro", progress=False)
    for layer in result.layers.values():
        assert layer.method == "astro"
        assert "regularize" in layer.stats
        assert np.isfinite(layer.stats["output_error"])


def test_options_reach_quantize_layer(monkeypatch):
    seen = []
    real = astro.quantize_layer

    def recording(W, X, **kwargs):
        seen.append(kwargs)
        return real(W, X, **kwargs)

    monkeypatch.setattr(astro, "quantize_layer", recording)
    model = tiny_llama(seed=9, layers=1)
    quantize_model(model, calibration_ids(), bits=4, group_size=16, method="gptq",
                   sym=True, act_order=True, damp=0.05, progress=False)
    assert len(seen) == 7
    for kwargs in seen:
        assert kwargs["bits"] == 4 and kwargs["group_size"] == 16
        assert kwargs["sym"] is True and kwargs["act_order"] is True
        assert kwargs["damp"] == 0.05
        assert "beta" not in kwargs


def test_calibration_dict_with_mask():
    model = tiny_llama(seed=10, layers=1)
    ids = calibration_ids(n=2, length=12)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    result = quantize_model(model, {"input_ids": ids, "attention_mask": mask},
                            bits=4, group_size=32, method="gptq", progress=False)
    assert result.calibration_tokens == 20


@pytest.mark.parametrize(
    "calibration, error",
    [
        (torch.zeros(0, 8, dtype=torch.long), ValueError),
        ([[]], ValueError),
        ("some text", TypeError),
    ],
)
def test_invalid_calibration_rejected(calibration, error):
    with pytest.raises(error):
        quantize_model(tiny_llama(layers=1), calibration, progress=False)


def test_invalid_method_rejected():
    with pytest.raises(ValueError, match="method"):
        quantize_model(tiny_llama(layers=1), calibration_ids(), method="awq", progress=False)


def test_perplexity_matches_model_loss():
    from astro.evaluate import perplexity

    model = tiny_llama(seed=16, layers=1)
    stream = torch.randint(1, VOCAB, (100,), generator=torch.Generator().manual_seed(2))
    result = perplexity(model, stream, seqlen=32)
    assert result["windows"] == 3 and result["tokens"] == 3 * 31
    losses = []
    with torch.no_grad():
        for k in range(3):
            ids = stream[k * 32:(k + 1) * 32].unsqueeze(0)
            losses.append(float(model(ids, labels=ids).loss))
    expected = float(np.exp(np.mean(losses)))
    assert result["ppl"] == pytest.approx(expected, rel=1e-5)

    first = perplexity(model, stream, seqlen=32, max_windows=1)
    assert first["windows"] == 1
    assert first["ppl"] == pytest.approx(float(np.exp(losses[0])), rel=1e-5)
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity(model, stream[:10], seqlen=32)


def test_num_blocks_leaves_later_blocks_float():
    model = tiny_llama(seed=17, layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = quantize_model(model, calibration_ids(), bits=3, group_size=32, method="gptq",
                            num_blocks=2, progress=False)
    assert {name.split(".")[2] for name in result.layers} == {"0", "1"}
    after = model.state_dict()
    for key, value in before.items():
        changed = not torch.equal(after[key], value)
        quantized = any(key == f"{name}.weight" for name in result.layers)
        assert changed == quantized, key
    with pytest.raises(ValueError, match="num_blocks"):
        quantize_model(model, calibration_ids(), num_blocks=4, progress=False)


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A saved tiny Llama with a word-level tokenizer, and a text file it can read."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0")
    model_dir = tmp_path / "model"
    tiny_llama(seed=18).save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))

    generator = np.random.default_rng(0)
    documents = [" ".join(f"w{t}" for t in generator.integers(1, VOCAB, 40)) for _ in range(20)]
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(documents), encoding="utf-8")
    return model_dir, text


def test_cli_quantize_then_eval(tiny_model_dir, tmp_path, capsys):
    from astro.cli import main

    model_dir, text = tiny_model_dir
    output = tmp_path / "quantized"
    common = ["--text", str(text), "--eval-seqlen", "32", "-q"]
    status = main(["quantize", "--model", str(model_dir), "--calibration", str(text),
                   "--method", "gptq", "--bits", "4", "--group-size", "32",
                   "--num-windows", "4", "--seqlen", "16", "--output", str(output),
                   "--eval"] + common)
    assert status == 0
    quantize_output = capsys.readouterr().out
    assert "quantized 14 layers with gptq W4 g32" in quantize_output
    assert (output / "model.safetensors").is_file()
    assert (output / "tokenizer.json").is_file()

    assert main(["eval", "--model", str(output)] + common) == 0
    eval_output = capsys.readouterr().out
    # The in-memory model after quantization and the reloaded checkpoint
    # differ only by float16 rounding of the scales.
    before = float(quantize_output.split("perplexity ")[1].split()[0])
    after = float(eval_output.split("perplexity ")[1].split()[0])
    assert after == pytest.approx(before, rel=1e-3)


def test_cli_demo_prints_table(tiny_model_dir, capsys):
    from astro.cli import main

    model_dir, text = tiny_model_dir
    status = main(["demo", "--model", str(model_dir), "--calibration", str(text),
                   "--text", str(text), "--methods", "rtn,gptq", "--group-size", "32",
                   "--num-windows", "4", "--seqlen", "16", "--eval-seqlen", "32",
                   "--max-windows", "2", "-q"])
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    table = {line.split()[0]: line.split()[1:] for line in lines if line.split()
             and line.split()[0] in ("float", "rtn", "gptq")}
    assert set(table) == {"float", "rtn", "gptq"}
    for values in table.values():
        assert np.isfinite(float(values[0]))


def test_cli_missing_model_reports_error(tmp_path, capsys):
    from astro.cli import main

    assert main(["eval", "--model", str(tmp_path / "absent"), "-q"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_gptq_options_reach_checkpoint(tiny_model_dir, tmp_path):
    import json

    from astro.cli import main

    model_dir, text = tiny_model_dir
    output = tmp_path / "quantized"
    status = main(["quantize", "--model", str(model_dir), "--calibration", str(text),
                   "--method", "gptq", "--bits", "3", "--group-size", "16", "--act-order",
                   "--static-groups", "--sym", "--num-windows", "2", "--seqlen", "16",
                   "--output", str(output), "-q"])
    assert status == 0
    qconfig = json.loads((output / "config.json").read_text())["quantization_config"]
    assert qconfig["desc_act"] is True
    assert qconfig["static_groups"] is True
    assert qconfig["sym"] is True
    assert qconfig["checkpoint_format"] == "gptq"
