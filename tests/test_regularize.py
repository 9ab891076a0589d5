"""The Astro solver: the C iteration against a NumPy reference, FISTA against
the plain method, the activation-guided mechanism, the budget mode, and
Astro+GPTQ against GPTQ on real MiniLM layers."""
import importlib

import numpy as np
import pytest

import astro
from astro import _core
from astro.regularize import regularize

# Tolerances between the float32 C iteration and the float64 reference after
# REFERENCE_STEPS plain steps, relative to max |W0| and to the objective.
# Each step adds float32 rounding through a GEMM. The measured differences
# stay below 5e-7 and 1.2e-7, so these bounds leave a margin of about 10.
REFERENCE_STEPS = 25
WEIGHT_RTOL = 1e-5
OBJECTIVE_RTOL = 1e-6


def project_threshold(a, radius):
    """Threshold mu of the sort-based L1-ball projection of |v| = a."""
    if a.sum() <= radius:
        return 0.0
    u = np.sort(a)[::-1]
    cumulative = np.cumsum(u)
    j = np.arange(1, len(u) + 1)
    rho = np.nonzero(u * j > cumulative - radius)[0][-1]
    return (cumulative[rho] - radius) / (rho + 1)


def reference_alpha(h, group_size, uniform=False):
    diag = np.clip(np.diag(h).astype(np.float64), 0, None)
    size = h.shape[0] if group_size == -1 else group_size
    norms = np.array([np.sqrt(diag[s:s + size].sum()) for s in range(0, h.shape[0], size)])
    return np.ones_like(norms) if uniform else norms / norms.mean()


def reference_objective(w, w0, hn, tau, size):
    d = w - w0
    smooth = 0.5 * np.sum((d @ hn) * d)
    penalty = sum(t * np.abs(w[:, s:s + size]).max(axis=1).sum()
                  for s, t in zip(range(0, w.shape[1], size), tau))
    return smooth + penalty


def reference_plain(w0, h, beta, group_size, steps, lam, uniform=False):
    """The plain proximal gradient method, written out in float64.

    V = W - (W - W0) Hn, then per row and group w = v - tau P(v / tau) with
    P the projection onto the unit L1 ball, which clips v to [-mu, mu].
    """
    w0 = w0.astype(np.float64)
    hn = h.astype(np.float64) / lam
    size = w0.shape[1] if group_size == -1 else group_size
    tau = beta * reference_alpha(h, group_size, uniform)
    w = w0.copy()
    objective = [reference_objective(w, w0, hn, tau, size)]
    for _ in range(steps):
        v = w - (w - w0) @ hn
        for k, start in enumerate(range(0, w.shape[1], size)):
            for r in range(w.shape[0]):
                part = v[r, start:start + size]
                if tau[k] > 0:
                    mu = project_threshold(np.abs(part), tau[k])
                    part = np.clip(part, -mu, mu)
                w[r, start:start + size] = part
        objective.append(reference_objective(w, w0, hn, tau, size))
    return w, np.array(objective)


def core_solve(w0, h, beta, group_size, steps, solver=0, tol=0.0, uniform=False):
    return _core.regularize(np.ascontiguousarray(w0, np.float32),
                            np.ascontiguousarray(h, np.float32), beta, group_size,
                            uniform, steps, solver, tol, 200, True)


def make_layer(rng, out, in_, tokens=400, dominant=()):
    x = rng.normal(size=(tokens, in_))
    for column, scale in dominant:
        x[:, column] *= scale
    h = (2.0 / tokens) * x.T @ x
    w = rng.normal(size=(out, in_)) * 0.05
    return w.astype(np.float32), h.astype(np.float32)


# out, in, group size, beta: odd sizes, a short last group, whole rows.
SHAPES = [
    (1, 8, 8, 2e-3),
    (7, 33, 8, 2e-3),
    (5, 200, 64, 1e-3),
    (16, 96, 32, 5e-3),
    (4, 50, -1, 2e-3),
]


@pytest.mark.parametrize("out,in_,group_size,beta", SHAPES)
def test_plain_matches_reference(out, in_, group_size, beta):
    rng = np.random.default_rng(out * 1000 + in_)
    w0, h = make_layer(rng, out, in_, dominant=[(0, 6.0), (in_ - 1, 3.0)])
    w, alpha, objective, stats = core_solve(w0, h, beta, group_size, REFERENCE_STEPS)
    expected, expected_objective = reference_plain(
        w0, h, beta, group_size, REFERENCE_STEPS, stats["lambda_max"])

    assert stats["iterations"] == REFERENCE_STEPS
    np.testing.assert_allclose(alpha, reference_alpha(h, group_size), rtol=1e-6)
    np.testing.assert_allclose(w, expected, rtol=0, atol=WEIGHT_RTOL * np.abs(w0).max())
    np.testing.assert_allclose(objective, expected_objective, rtol=OBJECTIVE_RTOL)
    assert not np.allclose(w, w0), "the case must move the weights"


def test_plain_uniform_alpha_matches_reference():
    rng = np.random.default_rng(3)
    w0, h = make_layer(rng, 6, 48, dominant=[(2, 5.0)])
    w, alpha, objective, stats = core_solve(w0, h, 3e-3, 16, 10, uniform=True)
    expected, _ = reference_plain(w0, h, 3e-3, 16, 10, stats["lambda_max"], uniform=True)
    np.testing.assert_array_equal(alpha, np.ones(3, np.float32))
    np.testing.assert_allclose(w, expected, rtol=0, atol=WEIGHT_RTOL * np.abs(w0).max())


def test_lambda_max_matches_eigvalsh():
    rng = np.random.default_rng(4)
    _, h = make_layer(rng, 2, 64, dominant=[(5, 4.0)])
    stats = core_solve(np.zeros((2, 64)), h, 1e-3, 16, 1)[3]
    largest = np.linalg.eigvalsh(h.astype(np.float64))[-1]
    assert stats["lambda_max"] == pytest.approx(largest, rel=1e-5)


def test_output_change_matches_definition():
    rng = np.random.default_rng(5)
    w0, h = make_layer(rng, 8, 40)
    w, stats = regularize(w0, astro.Hessian.from_matrix(h, 400), beta=5e-3, group_size=8)
    d = (w - w0).astype(np.float64)
    hd = h.astype(np.float64)
    expected = np.sum((d @ hd) * d) / np.sum((w0 @ hd) * w0)
    assert stats["output_change"] == pytest.approx(expected, rel=1e-4)
    assert stats["output_change"] > 0


def test_zero_beta_returns_weights():
    rng = np.random.default_rng(6)
    w0, h = make_layer(rng, 3, 16)
    w, _, _, stats = core_solve(w0, h, 0.0, 8, 50)
    np.testing.assert_array_equal(w, w0)
    assert stats["iterations"] == 0
    assert stats["stop_reason"] == 2


def test_zero_hessian_returns_weights():
    w0 = np.arange(12, dtype=np.float32).reshape(3, 4)
    w, alpha, _, stats = core_solve(w0, np.zeros((4, 4)), 1e-2, 2, 50)
    np.testing.assert_array_equal(w, w0)
    assert stats["stop_reason"] == 3


def test_dead_group_keeps_weights():
    # Columns 8..15 never see an input: alpha = 0 there, no penalty and no
    # gradient, so those weights stay as they are.
    rng = np.random.default_rng(8)
    w0, h = make_layer(rng, 5, 24)
    h[8:16, :] = 0
    h[:, 8:16] = 0
    w, alpha, _, _ = core_solve(w0, h, 1e-2, 8, 40, solver=1)
    assert alpha[1] == 0
    assert alpha[0] > 0
    assert alpha[2] > 0
    np.testing.assert_array_equal(w[:, 8:16], w0[:, 8:16])
    assert not np.allclose(w[:, :8], w0[:, :8])


def test_fista_objective_not_above_plain():
    rng = np.random.default_rng(9)
    w0, h = make_layer(rng, 32, 128, dominant=[(3, 8.0), (70, 4.0)])
    plain = core_solve(w0, h, 2e-3, 32, 100, solver=0)[2]
    fista = core_solve(w0, h, 2e-3, 32, 100, solver=1)[2]
    assert fista[-1] <= plain[-1]
    # A rejected momentum step is repeated, never taken, so FISTA's
    # objective never increases.
    assert np.all(np.diff(fista) <= 1e-12 * fista[0])


def test_tolerance_stops_early():
    rng = np.random.default_rng(10)
    w0, h = make_layer(rng, 8, 32)
    _, _, objective, stats = core_solve(w0, h, 1e-3, 8, 1000, solver=1, tol=1e-4)
    assert stats["stop_reason"] == 1
    assert stats["iterations"] < 1000
    last = objective[stats["iterations"]]
    assert objective[stats["iterations"] - 1] - last <= 1e-4 * last


def test_stats_report_groups():
    rng = np.random.default_rng(11)
    w0, h = make_layer(rng, 6, 40)
    w, stats = regularize(w0, astro.Hessian.from_matrix(h, 400), beta=1e-2, group_size=16,
                          record_objective=True)
    assert stats["alpha"].shape == (3,)
    assert np.all(stats["group_max_after"] <= stats["group_max_before"] + 1e-7)
    assert len(stats["objective"]) == stats["iterations"] + 1
    assert stats["objective"][-1] == pytest.approx(stats["objective_final"])
    assert stats["stop_reason"] in ("max_iterations", "tolerance")


def test_public_name_is_the_function():
    # The module astro/regularize.py shares its name with the function; the
    # package attribute must stay the function after the module is loaded.
    importlib.import_module("astro.regularize")
    assert callable(astro.regularize)


@pytest.mark.parametrize("kwargs", [
    {"solver": "newton"},
    {"beta": -1.0},
    {"iterations": -1},
    {"tol": float("nan")},
    {"group_size": 0},
    {"budget": -0.1},
])
def test_invalid_arguments(kwargs):
    w0 = np.ones((2, 8), np.float32)
    with pytest.raises((ValueError, TypeError)):
        regularize(w0, np.ones((10, 8), np.float32), **kwargs)


# ---------------------------------------------------------------------------
# Mechanism: a few input groups carry large, redundant activations
# ---------------------------------------------------------------------------

def dominant_group_layer(seed=1, group_size=16, tokens=2000):
    """Return W and X where the first two input groups of X are large (x8, x4).

    Those groups have rank 2 each, because outlier features in transformers
    are few and strongly correlated. The other six groups are unit-scale and
    full rank.
    """
    rng = np.random.default_rng(seed)
    blocks = []
    for scale in (8.0, 4.0, 1, 1, 1, 1, 1, 1):
        if scale > 1:
            latent = rng.normal(size=(tokens, 2)) @ rng.normal(size=(2, group_size))
            blocks.append(scale * latent / np.sqrt(2))
        else:
            blocks.append(rng.normal(size=(tokens, group_size)))
    x = np.hstack(blocks).astype(np.float32)
    w = rng.normal(size=(64, 8 * group_size)).astype(np.float32)
    return w, x


def test_reduction_largest_in_high_alpha_groups():
    w0, x = dominant_group_layer()
    _, stats = regularize(w0, x, beta=1e-3, group_size=16)
    reduction = 1 - stats["group_max_after"] / stats["group_max_before"]
    alpha = stats["alpha"]
    assert alpha[0] > alpha[1] > alpha[2:].max()
    assert reduction[0] > 3 * reduction[2:].max()
    assert reduction[1] > 3 * reduction[2:].max()


def test_alpha_shifts_reduction_against_uniform():
    # Against MagR (alpha = 1), the activation-guided weights clip the
    # high-activation groups harder and the others more gently.
    w0, x = dominant_group_layer(seed=2)
    _, guided = regularize(w0, x, beta=1e-3, group_size=16)
    _, uniform = regularize(w0, x, beta=1e-3, group_size=16, uniform_alpha=True)
    after_guided = guided["group_max_after"]
    after_uniform = uniform["group_max_after"]
    assert np.all(after_guided[:2] < after_uniform[:2])
    assert np.all(after_guided[2:] > after_uniform[2:])


# ---------------------------------------------------------------------------
# Budget mode
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("budget", [1e-5, 1e-3, 0.2])
def test_budget_is_respected(budget):
    rng = np.random.default_rng(12)
    w0, h = make_layer(rng, 16, 64, dominant=[(0, 5.0)])
    hessian = astro.Hessian.from_matrix(h, 400)
    w, stats = regularize(w0, hessian, budget=budget, group_size=16)
    assert stats["output_change"] <= budget
    assert stats["output_change"] >= 0.5 * budget, "the search stopped far below the budget"
    assert stats["solves"] <= 16
    # The chosen beta reproduces the same result when passed directly.
    again, direct = regularize(w0, hessian, beta=stats["beta"], group_size=16)
    assert direct["output_change"] == pytest.approx(stats["output_change"], rel=1e-6)


def test_budget_zero_keeps_weights():
    rng = np.random.default_rng(13)
    w0, h = make_layer(rng, 4, 16)
    w, stats = regularize(w0, astro.Hessian.from_matrix(h, 400), budget=0.0, group_size=8)
    np.testing.assert_array_equal(w, w0)
    assert stats["beta"] == 0.0


# ---------------------------------------------------------------------------
# Real MiniLM layers
# ---------------------------------------------------------------------------

REAL_LAYERS = [
    "encoder.layer.0.attention.output.dense",
    "encoder.layer.3.intermediate.dense",
    "encoder.layer.5.attention.self.value",
]


@pytest.fixture(scope="module")
def real_layers():
    from real_layers import minilm_layers

    layers = minilm_layers()
    return {name: (w, astro.Hessian(w.shape[1]).update(x)) for name, (w, x) in layers.items()
            if name in REAL_LAYERS}


def test_fista_reaches_plain_objective_in_a_third(real_layers):
    # The plain method's objective after 200 steps, reached by FISTA within
    # 66 steps (one GEMM each). The 384 x 384 layers keep the test short;
    # benchmarks/bench_astro.py --minilm measures every layer.
    for name, (w0, hessian) in real_layers.items():
        if w0.shape != (384, 384):
            continue
        h = hessian.matrix
        plain = core_solve(w0, h, 1e-4, 128, 200, solver=0)[2]
        fista = core_solve(w0, h, 1e-4, 128, 66, solver=1)[2]
        reached = np.nonzero(fista <= plain[-1])[0]
        assert reached.size > 0, f"{name}: FISTA did not reach {plain[-1]} in 66 steps"


@pytest.mark.parametrize("bits,group_size", [(3, 128), (2, 64)])
def test_astro_beats_gptq_on_real_layers(real_layers, bits, group_size):
    # With the default settings, Astro+GPTQ lowers the output error of GPTQ
    # by at least 5 % on each of these layers. Measured: 16 % to 29 % here,
    # and 5 % to 30 % over all 36 encoder layers at both settings.
    for name, (w0, hessian) in real_layers.items():
        gptq = astro.quantize_layer(w0, hessian, bits=bits, group_size=group_size,
                                    method="gptq")
        guided = astro.quantize_layer(w0, hessian, bits=bits, group_size=group_size,
                                      method="astro")
        assert guided.stats["output_error"] < 0.95 * gptq.stats["output_error"], name
