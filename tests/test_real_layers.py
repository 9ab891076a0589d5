"""GPTQ against RTN on real MiniLM weights and activations."""
import pytest

import astro

from real_layers import minilm_layers

LAYERS = [
    "encoder.layer.0.attention.self.query",
    "encoder.layer.0.intermediate.dense",
    "encoder.layer.3.attention.output.dense",
    "encoder.layer.5.output.dense",
]


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("name", LAYERS)
def test_gptq_error_below_rtn_on_real_layers(name, bits):
    w, x = minilm_layers()[name]
    h = astro.Hessian(w.shape[1]).update(x)
    gptq = astro.quantize_layer(w, h, bits=bits, group_size=128, method="gptq")
    rtn = astro.quantize_layer(w, h, bits=bits, group_size=128, method="rtn")
    print(f"{name} W{bits} g128: gptq {gptq.stats['output_error']:.5f} rtn {rtn.stats['output_error']:.5f}")
    assert gptq.stats["output_error"] < rtn.stats["output_error"]
