"""Drawing a class from logits with a given uniform number (SPEC section 1, last line).

The uniform numbers ``u_t`` are inputs, never hidden inside an engine, so that every path can be
checked sample for sample against the reference.
"""
from __future__ import annotations

import torch

__all__ = ["draw_selectors", "select_classes", "distance_to_cdf_boundary"]


def draw_selectors(batch: int, num_samples: int, generator: torch.Generator | None,
                   device: torch.device) -> torch.Tensor:
    """Uniform numbers in [0, 1), float32 ``(batch, num_samples)`` on ``device``.

    They are drawn on the generator's own device, so a seeded generator gives the same numbers
    whichever device then runs the network, and time-major, so that with a CPU generator drawing
    for consecutive chunks gives exactly the numbers of one draw for the whole (chunked generation
    equals one call).
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    source = generator.device if generator is not None else device
    u = torch.rand(num_samples, batch, generator=generator, device=source, dtype=torch.float32)
    return u.to(device).t()


def select_classes(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The smallest class ``k`` with ``u < p_0 + ... + p_k``, ``A - 1`` when rounding leaves none.

    ``logits`` is ``(..., A)``; ``u`` has the leading shape. Computed in ``logits``' dtype.
    """
    cdf = torch.cumsum(torch.softmax(logits, dim=-1), dim=-1)
    # The CDF never decreases, so the classes whose CDF is <= u are exactly those before the answer.
    below = (cdf <= u.to(cdf.dtype).unsqueeze(-1)).sum(dim=-1)
    return below.clamp(max=logits.shape[-1] - 1)


def distance_to_cdf_boundary(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """How far ``u`` lies from the nearest CDF boundary of ``softmax(logits)``, per position.

    Sampled classes of two paths may differ only where this is within their precision's tolerance.
    """
    cdf = torch.cumsum(torch.softmax(logits.double(), dim=-1), dim=-1)
    return (cdf - u.double().unsqueeze(-1)).abs().amin(dim=-1)
