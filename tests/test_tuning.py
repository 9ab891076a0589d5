"""Beta selection: the grid search's path, its result and its inputs."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from astro import tuning  # noqa: E402
from astro.evaluate import perplexity  # noqa: E402
from astro.pipeline import quantize_model  # noqa: E402
from test_pipeline import VOCAB, calibration_ids, tiny_llama, tiny_model_dir  # noqa: E402,F401


class FakeRuns:
    """Stand-ins for quantize_model and perplexity with a known score per beta.

    The fake quantization scales every decoder weight by (1 + beta), so the
    test can read back which run's weights the model ends with.
    """

    def __init__(self, score):
        self.score = score
        self.betas = []

    def quantize(self, model, calibration, *, method, beta, **options):
        self.betas.append(beta)
        with torch.no_grad():
            for weight in tuning._linear_weights(model).values():
                weight.mul_(1.0 + beta)

    def perplexity(self, model, ids, seqlen, max_windows=None):
        return {"ppl": self.score(self.betas[-1]), "seconds": 0.0}


@pytest.fixture
def fake(monkeypatch):
    def install(score):
        runs = FakeRuns(score)

        def fake_quantize(model, calibration, **kwargs):
            runs.quantize(model, calibration, **kwargs)
            return type("Result", (), {"seconds": 0.5})()

        monkeypatch.setattr("astro.pipeline.quantize_model", fake_quantize)
        monkeypatch.setattr("astro.evaluate.perplexity", runs.perplexity)
        return runs

    return install


def log_distance(target):
    return lambda beta: 10.0 + (math.log10(beta) - math.log10(target)) ** 2


@pytest.mark.parametrize("target, expected_path", [
    # Minimum above the start: start, both neighbors, then two steps up.
    (1e-3, [0, -1, 1, 2, 3]),
    # Minimum below the start: walk down and stop at the first worse score.
    (3e-6, [0, -1, 1, -2, -3]),
    # Minimum at the start: three runs only.
    (1e-4, [0, -1, 1]),
])
def test_search_path(fake, target, expected_path):
    runs = fake(log_distance(target))
    model = tiny_llama(layers=1)
    factor = math.sqrt(10.0)
    selection = tuning.select_beta(model, calibration_ids(), torch.arange(10), start=1e-4,
                                   factor=factor, max_runs=5, bits=3)
    expected = [1e-4 * factor ** k for k in expected_path]
    assert runs.betas == pytest.approx(expected)
    assert [r["beta"] for r in selection.runs] == pytest.approx(expected)
    best = min(selection.runs, key=lambda r: r["validation_ppl"])
    assert selection.beta == pytest.approx(best["beta"])


def test_search_stops_at_max_runs(fake):
    runs = fake(log_distance(1.0))  # far above the start: never stops improving
    selection = tuning.select_beta(tiny_llama(layers=1), calibration_ids(), torch.arange(10),
                                   max_runs=4, bits=3)
    assert len(runs.betas) == 4
    assert selection.beta == pytest.approx(max(runs.betas))


def test_model_ends_with_best_weights(fake):
    fake(log_distance(1e-3))
    model = tiny_llama(layers=1)
    float_weights = {k: w.detach().clone() for k, w in tuning._linear_weights(model).items()}
    selection = tuning.select_beta(model, calibration_ids(), torch.arange(10), bits=3)
    # Each run starts from the float weights, so the model ends with float * (1 + best beta).
    for name, weight in tuning._linear_weights(model).items():
        torch.testing.assert_close(weight.detach(), float_weights[name] * (1.0 + selection.beta))


def test_nan_first_score_replaced(fake):
    fake(lambda beta: math.nan if beta == pytest.approx(1e-4) else 5.0 + beta)
    selection = tuning.select_beta(tiny_llama(layers=1), calibration_ids(), torch.arange(10),
                                   bits=3)
    assert selection.beta != pytest.approx(1e-4)


def test_nan_score_never_chosen(fake):
    fake(lambda beta: math.nan if beta > 2e-4 else 5.0 + beta)
    selection = tuning.select_beta(tiny_llama(layers=1), calibration_ids(), torch.arange(10),
                                   bits=3)
    assert selection.beta < 2e-4
    assert math.isfinite(min(r["validation_ppl"] for r in selection.runs if r["beta"] == selection.beta))


def test_real_search_on_tiny_llama():
    model = tiny_llama(seed=5, layers=2)
    validation = torch.randint(1, VOCAB, (96,), generator=torch.Generator().manual_seed(3))
    selection = tuning.select_beta(model, calibration_ids(n=4), validation, bits=3,
                                   group_size=32, seqlen=32, max_runs=4, progress=False)
    assert 3 <= len(selection.runs) <= 4
    scores = [r["validation_ppl"] for r in selection.runs]
    assert all(math.isfinite(s) for s in scores)
    chosen = next(r for r in selection.runs if r["beta"] == selection.beta)
    assert chosen["validation_ppl"] == min(scores)
    # The model contains the chosen run's weights: scoring it again gives the same value.
    again = perplexity(model, validation, seqlen=32, max_windows=4)["ppl"]
    assert again == pytest.approx(chosen["validation_ppl"], rel=1e-6)
    assert set(selection.quantization.layers) == set(tuning._linear_weights(model))
    assert selection.quantization.config["beta"] == selection.beta


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="gptq"), "method"),
    (dict(beta=1e-3), "beta"),
    (dict(budget=0.1), "budget"),
    (dict(start=0.0), "start"),
    (dict(start=math.inf), "start"),
    (dict(factor=1.0), "factor"),
    (dict(max_runs=2), "max_runs"),
])
def test_invalid_arguments_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tuning.select_beta(tiny_llama(layers=1), calibration_ids(), torch.arange(10), **kwargs)


def test_cli_beta_auto(tiny_model_dir, capsys):
    from astro.cli import main

    model_dir, text = tiny_model_dir
    status = main(["quantize", "--model", str(model_dir), "--calibration", str(text),
                   "--method", "astro", "--bits", "3", "--group-size", "32",
                   "--num-windows", "2", "--seqlen", "16", "--eval-seqlen", "16",
                   "--beta", "auto", "--validation-fraction", "0.25", "--beta-runs", "3", "-q"])
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    runs = [line for line in lines if line.startswith("beta ")]
    assert len(runs) == 3
    chosen = [line for line in lines if line.startswith("chose beta ")]
    assert len(chosen) == 1
    chosen_beta = chosen[0].split()[2]
    assert any(line.startswith(f"beta {chosen_beta}:") for line in runs)
    assert any(line.startswith("quantized 14 layers with astro W3 g32") for line in lines)


@pytest.mark.parametrize("argv, message", [
    (["quantize", "--method", "gptq", "--beta", "auto"], "--beta auto applies"),
    (["quantize", "--method", "astro", "--beta", "auto", "--budget", "0.1"], "exclude"),
    (["demo", "--beta", "auto"], "only available"),
    (["quantize", "--method", "astro", "--beta", "auto", "--validation-fraction", "1.5"],
     "--validation-fraction must be in"),
])
def test_cli_beta_auto_rejected(tiny_model_dir, capsys, argv, message):
    from astro.cli import main

    model_dir, text = tiny_model_dir
    status = main(argv + ["--model", str(model_dir), "--calibration", str(text),
                          "--text", str(text), "-q"])
    assert status == 2
    assert message in capsys.readouterr().err


def test_cli_beta_not_a_number(capsys):
    from astro.cli import main

    with pytest.raises(SystemExit):
        main(["quantize", "--beta", "strong"])
    assert "expected a number or 'auto'" in capsys.readouterr().err


def test_exported_from_package():
    import astro

    assert astro.select_beta is tuning.select_beta
    assert "select_beta" in astro.__all__
