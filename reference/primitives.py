"""Primitives shared by the equations: softmax, tanh-GELU, LayerNorm, the dense FFN.

Shapes: (..., D) means any leading axes and a last axis of width D; F is the FFN hidden width.
"""
import numpy as np

from ecdit.core import contracts
from ecdit.core.checks import checked


@checked(contracts.softmax)
def softmax(x, axis=-1):
    """softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x) along `axis` (the max shift only
    guards against overflow; it cancels in the ratio)."""
    shifted = x - np.max(x, axis=axis, keepdims=True)           # (...), max entry 0
    e = np.exp(shifted)                                          # (...)
    return e / np.sum(e, axis=axis, keepdims=True)               # (...), sums to 1 along axis


@checked(contracts.gelu_tanh)
def gelu_tanh(x):
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    The project fixes the tanh form for every expert and dense FFN (the paper only says GeLU)."""
    inner = np.sqrt(2.0 / np.pi).astype(x.dtype) * (x + 0.044715 * x ** 3)    # (...)
    return 0.5 * x * (1.0 + np.tanh(inner))                                      # (...)


@checked(contracts.layer_norm)
def layer_norm(x, eps=1e-6):
    """LayerNorm over the last axis without a learned affine (DiT: AdaLN supplies scale and shift)."""
    mean = np.mean(x, axis=-1, keepdims=True)                    # (..., 1)
    var = np.mean((x - mean) ** 2, axis=-1, keepdims=True)       # (..., 1)
    return (x - mean) / np.sqrt(var + eps)                       # (..., D)


@checked(contracts.feed_forward)
def feed_forward(x, w1, w2):
    """Dense FFN, the layer an expert replicates (Sec. 2.3): GeLU(x W1) W2, no biases."""
    hidden = gelu_tanh(x @ w1)                                   # (..., F)
    return hidden @ w2                                           # (..., D)


@checked(contracts.sigmoid)
def sigmoid(x):
    """The logistic function 1 / (1 + exp(-x)), written as (1 + tanh(x / 2)) / 2: the same
    function without overflow for large |x|."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))                        # (...)  in (0, 1)


@checked(contracts.silu)
def silu(x):
    """SiLU (swish), x * sigmoid(x), the activation of the timestep MLP and AdaLN (DiT)."""
    return x * 0.5 * (1.0 + np.tanh(0.5 * x))                   # (...)  sigmoid(x) = (1 + tanh(x/2)) / 2
