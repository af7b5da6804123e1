"""Random networks and inputs at realistic scales, for tests, benchmarks and untrained baselines.

SPEC section 4: weights ~ N(0, 1/fan_in) and conditioning of unit scale, never zeros, so that a
wrong index or an unwritten output cannot hide.
"""
from __future__ import annotations

import torch

__all__ = ["random_nv_wavenet_args", "random_cond_input"]


def _normal(generator, *shape, fan_in: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64) / fan_in ** 0.5


def random_nv_wavenet_args(n_residual: int = 64, n_skip: int = 256, n_classes: int = 256,
                           n_layers: int = 20, max_dilation: int = 512, *, seed: int = 0,
                           use_embed_tanh: bool = True, zero_embedding_prev: bool = False,
                           with_head_biases: bool = False, dtype=torch.float32) -> dict:
    """Keyword arguments for ``NVWaveNet(**args)`` with N(0, 1/fan_in) weights.

    ``res_weights`` has L - 1 entries, as NV-WaveNet's exporter writes it.
    """
    g = torch.Generator().manual_seed(seed)
    R, S, A, L = n_residual, n_skip, n_classes, n_layers
    args = {
        # Embeddings are looked up, not multiplied: unit scale keeps x_0 at unit scale.
        "embedding_prev": (torch.zeros(A, R, dtype=torch.float64) if zero_embedding_prev
                           else _normal(g, A, R, fan_in=2)),
        "embedding_curr": _normal(g, A, R, fan_in=2),
        "conv_out_weight": _normal(g, A, S, fan_in=S),
        "conv_end_weight": _normal(g, A, A, fan_in=A),
        "dilate_weights": [_normal(g, 2 * R, R, 2, fan_in=2 * R) for _ in range(L)],
        "dilate_biases": [_normal(g, 2 * R, fan_in=2 * R) for _ in range(L)],
        "max_dilation": max_dilation,
        "res_weights": [_normal(g, R, R, fan_in=R) for _ in range(L - 1)],
        "res_biases": [_normal(g, R, fan_in=R) for _ in range(L - 1)],
        "skip_weights": [_normal(g, S, R, fan_in=R) for _ in range(L)],
        "skip_biases": [_normal(g, S, fan_in=R) for _ in range(L)],
        "use_embed_tanh": use_embed_tanh,
    }
    if with_head_biases:
        args["conv_out_bias"] = _normal(g, A, fan_in=S)
        args["conv_end_bias"] = _normal(g, A, fan_in=A)
    return {k: ([t.to(dtype) for t in v] if isinstance(v, list)
                else v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}


def random_cond_input(n_residual: int, batch: int, n_layers: int, samples: int, *, seed: int = 0,
                      dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Unit-scale conditioning ``(2R, batch, L, samples)``."""
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(2 * n_residual, batch, n_layers, samples, generator=g, dtype=torch.float64)
    return cond.to(device=device, dtype=dtype)
