"""Analysis tools from the seed papers.

- ``hvp``: Hessian-vector products (double backward or finite differences of gradients).
- ``implicit``: the modified losses of gradient descent and SGD (Barrett & Dherin, ICLR 2021;
  Smith, Dherin, Barrett & De, ICLR 2021), their explicit regularizer for ``spad.train.fit``
  and a gradient-flow integrator to compare trajectories.
- ``spectrum``: eigenvalues of weight matrices against Marchenko–Pastur, level spacings against
  the Wigner surmise, a ``fit`` callback that tracks them, a teacher–student experiment
  (Park, Favoni, Lucini & Aarts; Aarts, Lucini & Park).

    >>> import spad.analysis as A
    >>> hv = A.hvp(lambda: F.cross_entropy(model(x), y), model.parameters(), vs, method="exact")
"""
from . import implicit, spectrum
from .hvp import flatten, grad, hvp, unflatten

__all__ = ["flatten", "grad", "hvp", "implicit", "spectrum", "unflatten"]
