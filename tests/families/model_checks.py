"""What the families' model tests share: closeness of two trees, the scanned layout of unrolled params, and counts
over a traced jaxpr (matmul FLOPs, a primitive's occurrences).

A test module imports it by putting tests/families/ on sys.path:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from model_checks import ...
"""

import jax
import jax.numpy as jnp
import numpy as np


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def stack_unrolled(blocks: dict, prefix: str, num: int, name: str):
  """In the dict `blocks` (in place), {prefix}0 .. {prefix}{num - 1} -> `name`, their leaves stacked on axis 0: an
  unrolled model's blocks in the scanned layout."""
  unrolled = [blocks.pop(f"{prefix}{i}") for i in range(num)]
  blocks[name] = jax.tree.map(lambda *xs: jnp.stack(xs), *unrolled)


def _sub_jaxprs(eqn):
  """The jaxprs nested in an equation's params (pjit, scan, remat, cond branches, ...)."""
  for param in eqn.params.values():
    for sub in param if isinstance(param, (tuple, list)) else (param,):
      inner = getattr(sub, "jaxpr", sub)
      if hasattr(inner, "eqns"):
        yield inner


def matmul_flops(jaxpr) -> float:
  """2 * multiply-adds of every dot_general in a jaxpr, nested jaxprs (scan bodies: x length) included."""
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      total += (
        2.0
        * np.prod([eqn.invars[0].aval.shape[d] for d in contract])
        * np.prod(eqn.outvars[0].aval.shape)
      )
    total += sum(matmul_flops(inner) * eqn.params.get("length", 1) for inner in _sub_jaxprs(eqn))
  return total


def count_primitive(jaxpr, name: str) -> int:
  """Occurrences of a primitive in a jaxpr, nested jaxprs included (each counted once)."""
  return sum(eqn.primitive.name == name for eqn in jaxpr.eqns) + sum(
    count_primitive(inner, name) for eqn in jaxpr.eqns for inner in _sub_jaxprs(eqn)
  )
