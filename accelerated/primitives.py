"""Primitives shared by the equations: softmax, tanh-GELU, LayerNorm, the dense FFN (JAX twin of
reference/primitives.py).

Shapes: (..., D) means any leading axes and a last axis of width D; F is the FFN hidden width.
"""
import jax
import jax.numpy as jnp

from .dots import dot_last
from .jit import checked_jit
from ecdit.core import contracts


@checked_jit(contracts.softmax, static_argnames=("axis",))
def softmax(x, axis=-1):
    """softmax along `axis` (jax.nn.softmax: the same max-shifted formula)."""
    return jax.nn.softmax(x, axis=axis)                          # (...), sums to 1 along axis


@checked_jit(contracts.elementwise)
def gelu_tanh(x):
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return jax.nn.gelu(x, approximate=True)                      # (...)


@checked_jit(contracts.layer_norm, static_argnames=("eps",))
def layer_norm(x, eps=1e-6):
    """LayerNorm over the last axis without a learned affine (DiT: AdaLN supplies scale and shift)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)                   # (..., 1)
    var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)      # (..., 1)
    return (x - mean) * jax.lax.rsqrt(var + eps)                 # (..., D)


@checked_jit(contracts.feed_forward)
def feed_forward(x, w1, w2):
    """Dense FFN, the layer an expert replicates (Sec. 2.3): GeLU(x W1) W2, no biases."""
    hidden = gelu_tanh(dot_last(x, w1))                                   # (..., F)
    return dot_last(hidden, w2)                                           # (..., D)


@checked_jit(contracts.sigmoid)
def sigmoid(x):
    """The logistic function 1 / (1 + exp(-x))."""
    return jax.nn.sigmoid(x)                                     # (...)  in (0, 1)


@checked_jit(contracts.elementwise)
def silu(x):
    """SiLU (swish), x * sigmoid(x), the activation of the timestep MLP and AdaLN (DiT)."""
    return jax.nn.silu(x)                                        # (...)
