"""fastrnn: drop-in torch.nn.LSTM / GRU / RNN and their cells on fused recurrent kernels."""

from .backends import BACKENDS, BackendUnavailableError, explain
from .cell_modules import GRUCell, LSTMCell, RNNCell
from .convert import ConvertWarning, convert
from .modules import GRU, LSTM, RNN
from .quantization import QuantizationWarning, register as _register_quantization

# quantize_dynamic(model, {fastrnn.LSTM, ...}) quantizes them as nn's (torch quantizes no nn.RNN)
_register_quantization(LSTM, GRU, LSTMCell, GRUCell, RNNCell)

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "convert", "explain", "BACKENDS", "BackendUnavailableError",
           "ConvertWarning", "QuantizationWarning"]
__version__ = "0.1.0"
