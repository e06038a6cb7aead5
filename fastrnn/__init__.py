"""fastrnn: drop-in torch.nn.LSTM / torch.nn.GRU on fused recurrent kernels."""

from .backends import BACKENDS, BackendUnavailableError, explain
from .convert import convert
from .modules import GRU, LSTM

__all__ = ["LSTM", "GRU", "convert", "explain", "BACKENDS", "BackendUnavailableError"]
__version__ = "0.1.0"
