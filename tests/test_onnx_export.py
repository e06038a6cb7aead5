"""ONNX export of fastrnn layers with both of torch's exporters: the standard ONNX LSTM/GRU/RNN operators (what
ONNX Runtime, OpenVINO and TensorRT run), dynamic batch and length, packed input as sequence_lens, run in ONNX
Runtime against nn.LSTM/nn.GRU."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from conftest import CELLS, rel_error
from test_deployment import ALL_CELLS, CONFIGS, IDS, _inputs, _pair

# The ONNX operator of each cell (the Elman RNN's with activations Tanh or Relu).
ONNX_OPERATOR = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}

# --- ONNX --------------------------------------------------------------------------------------

onnx = pytest.importorskip("onnx", reason="the ONNX export tests need onnx (pip install onnx onnxscript onnxruntime)")
ort = pytest.importorskip("onnxruntime", reason="the ONNX export tests need onnxruntime (pip install onnxruntime)")


def _onnx_bytes(model, example: tuple, dynamo: bool, names: list[str], dynamic: list[dict]) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
            program = torch.onnx.export(model, example, dynamo=True, verbose=False,
                                        dynamic_shapes=tuple(dynamic), input_names=names)
            return program.model_proto.SerializeToString()
        buffer = io.BytesIO()
        torch.onnx.export(model, example, buffer, dynamo=False, input_names=names,
                          dynamic_axes={name: axes for name, axes in zip(names, dynamic)})
        return buffer.getvalue()


def _run_onnx(model_bytes: bytes, inputs: list[torch.Tensor]) -> list:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)})


# Every configuration with the TorchScript exporter; the stacked bidirectional one with the dynamo exporter,
# whose exports take seconds each.
EXPORTS = [(False, config) for config in CONFIGS] + [(True, CONFIGS[1])]
EXPORT_IDS = [f"torchscript-exporter-{i}" for i in IDS] + [f"dynamo-exporter-{IDS[1]}"]


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("dynamo,config", EXPORTS, ids=EXPORT_IDS)
def test_onnx_export_emits_the_standard_operator_and_runs_in_onnxruntime(dynamo, cell, config):
    ours, theirs = _pair(cell, "auto", config)
    batch_axis, time_axis = (0, 1) if ours.batch_first else (1, 0)
    # The dynamo exporter unrolls torch's Elman RNN over the steps (nn.RNN's own export fails with a dynamic
    # length too): its export has a fixed length.
    fixed_length = dynamo and cell.startswith("RNN_")
    axes = {batch_axis: "batch"} if fixed_length else {batch_axis: "batch", time_axis: "steps"}
    model_bytes = _onnx_bytes(ours, (_inputs(ours, 3, 4, seed=0),), dynamo, ["x"], [axes])
    graph = onnx.load_from_string(model_bytes).graph
    assert [i.name for i in graph.input] == ["x"]  # a graph without inputs is the silent failure this guards
    operators = [n.op_type for n in graph.node]
    if not fixed_length:
        assert operators.count(ONNX_OPERATOR[cell]) == config.get("num_layers", 1)
    for batch, steps in [(5, 4), (1, 4)] if fixed_length else [(5, 9), (1, 2)]:
        x = _inputs(ours, batch, steps, seed=batch)
        got = _run_onnx(model_bytes, [x])
        expected = theirs(x)
        assert rel_error(torch.from_numpy(got[0]), expected[0]) < 1e-6


class _PackedClassifier(nn.Module):
    """What deployed sequence models do: pack the real tokens, run the layer, pad again."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, lengths):
        output, _ = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return pad_packed_sequence(output, total_length=x.shape[0])[0]


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_onnx_export_of_packed_input_passes_sequence_lens(cell):
    ours, theirs = _pair(cell, "auto", dict(input_size=3, hidden_size=4, bidirectional=True))
    example = (_inputs(ours, 3, 6, seed=0), torch.tensor([6, 2, 4]))
    model_bytes = _onnx_bytes(_PackedClassifier(ours), example, False, ["x", "lengths"],
                              [{0: "steps", 1: "batch"}, {0: "batch"}])
    node = next(n for n in onnx.load_from_string(model_bytes).graph.node if n.op_type == ONNX_OPERATOR[cell])
    assert len(node.input) > 4 and node.input[4]  # sequence_lens is wired
    x, lengths = _inputs(ours, 5, 9, seed=1), torch.tensor([9, 3, 1, 5, 2])
    got = _run_onnx(model_bytes, [x, lengths])[0]
    assert rel_error(torch.from_numpy(got), _PackedClassifier(theirs)(x, lengths)) < 1e-6


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_onnx_export_refuses_proj_size_clearly(dynamo):
    ours = CELLS["LSTM"][0](3, 5, proj_size=2)
    with pytest.raises(Exception, match=r"proj_size=2 cannot be exported to ONNX: ONNX's LSTM operator has no projection"):
        _onnx_bytes(ours, (torch.randn(4, 2, 3),), dynamo, ["x"], [{0: "steps", 1: "batch"}])


