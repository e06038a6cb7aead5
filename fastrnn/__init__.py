"""fastrnn: drop-in torch.nn.LSTM / GRU / RNN and their cells on fused recurrent kernels."""

from .backends import BACKENDS, BackendUnavailableError, explain
from .cell_modules import GRUCell, LSTMCell, RNNCell
from .convert import ConvertWarning, convert
from .modules import GRU, LSTM, RNN
from .quantization import QuantizationWarning, register as _register_quantization

_register_quantization(LSTM, GRU)  # quantize_dynamic(model, {fastrnn.LSTM, fastrnn.GRU}) quantizes them

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "convert", "explain", "BACKENDS", "BackendUnavailableError",
           "ConvertWarning", "QuantizationWarning"]
__version__ = "0.1.0"
