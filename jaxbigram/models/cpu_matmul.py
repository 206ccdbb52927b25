"""The GPT's linear layers on the CPU: ``x @ w`` whose weight gradient is a row-major GEMM (a ``custom_vjp``).

Autodiff writes the weight gradient ``xᵀ · g`` as a product contracting the rows of both operands; XLA's CPU back end
runs that layout with its own dot emitter and a transposing copy of ``g``. Here ``xᵀ`` is materialised once (an
optimisation barrier keeps XLA from folding the transpose back into the product), so the product is a plain
``(in, n) · (n, out)`` GEMM that XLA hands to its fast library kernels. Same math; float rounding differs.
Accelerators keep autodiff's products (docs/performance.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def matmul(x, w):
    """``x @ w`` (``x`` ``(..., in)``, ``w`` ``(in, out)``) whose weight gradient is a row-major GEMM."""
    return jnp.matmul(x, w)


def _matmul_fwd(x, w):
    return jnp.matmul(x, w), (x, w)


def _matmul_bwd(residuals, g):
    x, w = residuals
    rows = x.reshape(-1, x.shape[-1])
    dw = jax.lax.optimization_barrier(rows.T) @ g.reshape(-1, g.shape[-1])
    return jnp.matmul(g, w.T), dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """``nn.Dense``'s product through ``matmul`` (Dense contracts the last axis of ``lhs`` with ``rhs``'s first, no
    batch axes)."""
    return matmul(lhs, rhs)
