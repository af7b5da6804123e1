"""nvwavenet: fast autoregressive WaveNet inference for PyTorch.

    from nvwavenet import NVWaveNet, Impl
    net = NVWaveNet(**weights)                  # NV-WaveNet's argument names
    samples = net.infer(cond_input, Impl.AUTO)  # int32 (batch, samples)
"""
from ._version import __version__
from .audio import mu_law_decode, mu_law_encode
from .engines import build_info
from .inference import Impl, NVWaveNet
from .network import layer_dilations, receptive_field

__all__ = ["__version__", "build_info", "Impl", "NVWaveNet", "layer_dilations", "receptive_field",
           "mu_law_encode", "mu_law_decode"]
