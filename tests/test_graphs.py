"""Random expression graphs (DAGs with fan-out and broadcasting) over a few float64 leaves,
checked against numpy in forward and central finite differences in backward.

Hypothesis draws the program: leaf shapes (all broadcastable to one base shape), then a
sequence of unary / binary / reduction steps whose operands are any earlier values, so
values are reused and gradients must accumulate across paths. Every unary op is bounded or
applied to a positive argument, so there are no kinks or domain errors to dodge."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spad
from helpers import numeric_grad

# name -> (spad fn, numpy fn)
UNARY = {
    "tanh": (lambda x: x.tanh(), np.tanh),
    "sigmoid": (lambda x: x.sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
    "neg": (lambda x: -x, np.negative),
    "exp_tanh": (lambda x: x.tanh().exp(), lambda x: np.exp(np.tanh(x))),
    "log1p_sq": (lambda x: (x * x + 1.0).log(), lambda x: np.log(x * x + 1)),
    "sqrt1p_sq": (lambda x: (x ** 2 + 1.0).sqrt(), lambda x: np.sqrt(x ** 2 + 1)),
    "scale": (lambda x: 0.5 * x - 0.25, lambda x: 0.5 * x - 0.25),
    "cube_tanh": (lambda x: x.tanh() ** 3, lambda x: np.tanh(x) ** 3),
    "recip": (lambda x: 1.0 / (x * x + 1.0), lambda x: 1 / (x * x + 1)),
}
BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / (b * b + 1.0), lambda a, b: a / (b * b + 1)),
}


def run(program, leaves, backend):
    """Evaluate the program; `backend` is 0 for spad, 1 for numpy."""
    vals = list(leaves)
    for step in program:
        kind = step[0]
        if kind == "u":
            _, name, i = step
            vals.append(UNARY[name][backend](vals[i]))
        elif kind == "b":
            _, name, i, j = step
            vals.append(BINARY[name][backend](vals[i], vals[j]))
        else:  # reduction over one axis (kept, so the result still broadcasts)
            _, name, i, axis = step
            v = vals[i]
            axis = axis % max(v.ndim, 1)
            if v.ndim == 0:
                vals.append(v)
            elif name == "sum":
                vals.append(v.sum(axis=axis, keepdims=True))
            else:
                vals.append(v.mean(axis=axis, keepdims=True))
    return vals


@st.composite
def programs(draw):
    ndim = draw(st.integers(0, 3))
    base = draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim))
    n_leaves = draw(st.integers(1, 3))
    shapes = []
    for _ in range(n_leaves):
        drop = draw(st.integers(0, ndim))  # leading axes a leaf may lack
        dims = [1 if draw(st.booleans()) and draw(st.booleans()) else d for d in base[drop:]]
        shapes.append(tuple(dims))
    program = []
    for k in range(draw(st.integers(1, 8))):
        n = n_leaves + k
        pick = st.integers(0, n - 1)
        kind = draw(st.sampled_from("uubbr"))
        if kind == "u":
            program.append(("u", draw(st.sampled_from(sorted(UNARY))), draw(pick)))
        elif kind == "b":
            program.append(("b", draw(st.sampled_from(sorted(BINARY))), draw(pick), draw(pick)))
        else:
            program.append(("r", draw(st.sampled_from(["sum", "mean"])), draw(pick), draw(st.integers(-3, 2))))
    # Often feed the final value from several earlier ones: more fan-out, more accumulation.
    if draw(st.booleans()) and len(program) > 1:
        n = n_leaves + len(program)
        program.append(("b", "add", n - 1, draw(st.integers(0, n - 2))))
    data_seed = draw(st.integers(0, 2**32 - 1))
    return shapes, program, data_seed


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_random_graph_gradients(case):
    shapes, program, data_seed = case
    rng = np.random.default_rng(data_seed)
    arrays = [rng.standard_normal(s) for s in shapes]

    leaves = [spad.tensor(a.copy(), requires_grad=True) for a in arrays]
    out = run(program, leaves, 0)[-1]
    ref = run(program, arrays, 1)[-1]
    assert out.shape == np.shape(ref)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-12)

    R = np.random.default_rng(data_seed + 1).standard_normal(out.shape)
    (out * spad.tensor(R)).sum().backward()

    def f(arrs):
        return float((run(program, arrs, 1)[-1] * R).sum())

    for i, leaf in enumerate(leaves):
        num = numeric_grad(f, [a.copy() for a in arrays], i)
        got = np.zeros_like(arrays[i]) if leaf.grad is None else leaf.grad.numpy()
        assert got.shape == arrays[i].shape
        # Central differences in float64 with eps 1e-6: rounding error ~1e-10 * |f|, so the
        # absolute tolerance scales with the size of the gradient being checked.
        scale = max(1.0, float(np.abs(num).max()))
        np.testing.assert_allclose(got, num, rtol=1e-5, atol=1e-6 * scale,
                                   err_msg=f"leaf {i} of {shapes}, program {program}")


def test_unused_leaf_gets_no_grad():
    a = spad.tensor(np.ones(3), requires_grad=True)
    b = spad.tensor(np.ones(3), requires_grad=True)
    (a * 2.0).sum().backward()
    assert b.grad is None


def _first_grads(program, arrays, R):
    leaves = [spad.tensor(a.copy(), requires_grad=True) for a in arrays]
    (run(program, leaves, 0)[-1] * spad.tensor(R)).sum().backward()
    return [np.zeros_like(a) if t.grad is None else t.grad.numpy().copy() for a, t in zip(arrays, leaves)]


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_random_graph_hessian_vector_products(case):
    """create_graph=True through every op of the random graph: H v against central
    differences of the (separately checked) first-order gradient along v."""
    shapes, program, data_seed = case
    rng = np.random.default_rng(data_seed)
    arrays = [rng.standard_normal(s) for s in shapes]
    vs = [rng.standard_normal(s) for s in shapes]
    leaves = [spad.tensor(a.copy(), requires_grad=True) for a in arrays]
    out = run(program, leaves, 0)[-1]
    R = np.random.default_rng(data_seed + 1).standard_normal(out.shape)
    (out * spad.tensor(R)).sum().backward(create_graph=True)
    gs = [t.grad for t in leaves]
    for t in leaves:
        t.grad = None
    terms = [(g * spad.tensor(v)).sum() for g, v in zip(gs, vs) if g is not None and g.requires_grad]
    if terms:
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        total.backward()
    hv = [np.zeros_like(a) if t.grad is None else t.grad.numpy() for a, t in zip(arrays, leaves)]

    eps = 1e-5
    gp = _first_grads(program, [a + eps * v for a, v in zip(arrays, vs)], R)
    gm = _first_grads(program, [a - eps * v for a, v in zip(arrays, vs)], R)
    for i, (h, p, m) in enumerate(zip(hv, gp, gm)):
        num = (p - m) / (2 * eps)
        # Truncation ~eps^2 * third derivative, rounding ~1e-16 * |g| / eps: scale with |num|.
        scale = max(1.0, float(np.abs(num).max()))
        np.testing.assert_allclose(h, num, rtol=1e-5, atol=1e-6 * scale,
                                   err_msg=f"leaf {i} of {shapes}, program {program}")
