"""nvwavenet: fast autoregressive WaveNet inference for PyTorch.

    from nvwavenet import NVWaveNet, Impl
    net = NVWaveNet(**weights)                  # NV-WaveNet's argument names
    samples = net.infer(cond_input, Impl.AUTO)  # int32 (batch, samples)
"""
import os as _os
import sys as _sys

# PyTorch's OpenMP runtime (libgomp) keeps its idle threads spinning for a while after every
# parallel operation. Where another process holds one of the cores, the thread spinning there uses
# up its share of that core, and the next operation waits for it: the demo's training ran 6 to 12
# times slower on a busy 2-core machine (README, "A busy machine"). Sleeping instead costs a
# wake-up per operation. libgomp reads the policy once, when torch is first loaded; a policy the
# user set wins.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ._version import __version__  # noqa: E402 (torch must not be imported before the policy is set)
from .audio import mu_law_decode, mu_law_encode
from .engines import build_info
from .inference import Impl, NVWaveNet
from .network import layer_dilations, receptive_field

__all__ = ["__version__", "build_info", "Impl", "NVWaveNet", "layer_dilations", "receptive_field",
           "mu_law_encode", "mu_law_decode"]
