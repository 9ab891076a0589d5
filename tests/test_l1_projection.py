"""The Euclidean projection onto the L1 ball, checked against its defining
properties and against the sort-based method of Duchi et al. (2008)."""
import numpy as np
import pytest

from astro import _core

# float32 inputs, float64 checks: sums over up to 1000 values of order 1.
RTOL = 1e-5


def project_sorted(v, radius):
    """Sort-based projection (Duchi et al. 2008), in float64."""
    v = np.asarray(v, dtype=np.float64)
    a = np.abs(v)
    if a.sum() <= radius:
        return v.copy()
    u = np.sort(a)[::-1]
    cumulative = np.cumsum(u)
    j = np.arange(1, len(u) + 1)
    rho = np.nonzero(u * j > cumulative - radius)[0][-1]
    mu = (cumulative[rho] - radius) / (rho + 1)
    return np.sign(v) * np.maximum(a - mu, 0.0)


def check_kkt(v, p, radius):
    """Assert the optimality conditions of p = argmin ||x - v|| s.t. ||x||_1 <= r.

    Either p = v inside the ball, or ||p||_1 = r and there is mu >= 0 with
    v_i - p_i = mu sign(p_i) where p_i != 0 and |v_i| <= mu where p_i = 0.
    """
    v = v.astype(np.float64)
    p = p.astype(np.float64)
    scale = max(np.abs(v).max(initial=0.0), radius, 1e-30)
    tol = RTOL * scale * max(len(v), 1) ** 0.5
    assert np.abs(p).sum() <= radius + tol, "infeasible"
    if np.abs(v).sum() <= radius:
        np.testing.assert_allclose(p, v, rtol=0, atol=tol)
        return
    assert np.abs(p).sum() == pytest.approx(radius, rel=RTOL, abs=tol)
    nonzero = p != 0
    assert np.all(np.sign(p[nonzero]) == np.sign(v[nonzero])), "sign flipped"
    shrink = np.abs(v) - np.abs(p)
    mu = shrink[nonzero].mean() if nonzero.any() else np.abs(v).max()
    assert mu >= -tol
    np.testing.assert_allclose(shrink[nonzero], mu, rtol=0, atol=tol)
    assert np.all(np.abs(v[~nonzero]) <= mu + tol), "a zeroed entry exceeds mu"


def random_cases():
    rng = np.random.default_rng(7)
    for n in (1, 2, 3, 17, 128, 1000):
        v = rng.normal(size=n).astype(np.float32)
        l1 = float(np.abs(v).sum())
        for radius in (1e-6 * l1, 0.1 * l1, 0.5 * l1, 0.99 * l1, 2.0 * l1):
            yield f"random-{n}-{radius / max(l1, 1e-30):.2g}", v, radius


CASES = list(random_cases()) + [
    ("ties", np.array([3, 3, 3, -3, 1, 1], np.float32), 2.0),
    ("ties-absorbed", np.array([2, -2, 2, -2], np.float32), 8.0),
    ("zeros", np.zeros(9, np.float32), 1.0),
    ("zeros-mixed", np.array([0, 0, 5, 0, -1], np.float32), 1.0),
    ("negative", -np.array([4, 1, 0.5, 2], np.float32), 3.0),
    ("all-absorbed", np.array([0.1, -0.2, 0.3], np.float32), 1.0),
    ("boundary", np.array([0.25, -0.25, 0.5], np.float32), 1.0),
    ("one-dominant", np.array([100, 1e-3, -1e-3, 2e-3], np.float32), 1.0),
    ("wide-range", np.array([1e4, -1e-4, 3e3, 7.0], np.float32), 50.0),
]


@pytest.mark.parametrize("name,v,radius", CASES, ids=[c[0] for c in CASES])
def test_projection_kkt(name, v, radius):
    p = _core.project_l1_ball(v, radius)
    assert p.dtype == np.float32 and p.shape == v.shape
    check_kkt(v, p, radius)


@pytest.mark.parametrize("name,v,radius", CASES, ids=[c[0] for c in CASES])
def test_projection_matches_sorting(name, v, radius):
    p = _core.project_l1_ball(v, radius)
    expected = project_sorted(v, radius)
    atol = RTOL * max(np.abs(v).max(initial=0.0), radius)
    np.testing.assert_allclose(p, expected, rtol=RTOL, atol=atol)


def test_projection_zero_radius():
    v = np.array([1.0, -2.0, 0.0], np.float32)
    np.testing.assert_array_equal(_core.project_l1_ball(v, 0.0), np.zeros(3, np.float32))


def test_projection_empty():
    assert _core.project_l1_ball(np.zeros(0, np.float32), 1.0).shape == (0,)


def test_projection_inside_is_identity():
    v = np.array([0.5, -0.25, 0.125], np.float32)
    np.testing.assert_array_equal(_core.project_l1_ball(v, 1.0), v)


def test_projection_rejects_negative_radius():
    with pytest.raises(ValueError):
        _core.project_l1_ball(np.ones(3, np.float32), -1.0)
