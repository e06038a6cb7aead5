"""The inference runtimes a user would deploy an RNN to instead: ONNX Runtime and OpenVINO, on the CPU.

Each runs the case's nn.LSTM/nn.GRU (the same weights) exported once per case, outside the timed region, by
torch.onnx.export's TorchScript exporter (dynamo=False: the standard ONNX LSTM/GRU operators), with dynamic
batch and length axes, at the bench's thread count. The timed call is what a torch user pays: the input
tensor's numpy view (torch.Tensor.numpy, no copy), the runtime's run, which returns freshly allocated numpy
outputs, and torch.from_numpy of those (no copy). Forward rows only: these runtimes run no backward."""

from __future__ import annotations

import importlib.util
import io
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .cases import Case
from .implementations import Implementation

INFERENCE_ONLY = "inference-only runtime (no backward)"


def export_onnx(torch_module: nn.RNNBase, example: torch.Tensor) -> bytes:
    """The module as an ONNX model: input x (T, B, I) -> output, final h (and c for an LSTM); T and B dynamic."""
    names = ["output", "h_n"] + (["c_n"] if torch_module.mode == "LSTM" else [])
    axes = {"x": {0: "steps", 1: "batch"}, "output": {0: "steps", 1: "batch"}}
    axes.update({name: {1: "batch"} for name in names[1:]})
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(torch_module, (example,), buffer, dynamo=False, input_names=["x"], output_names=names,
                          dynamic_axes=axes)
    return buffer.getvalue()


class Runtime(Implementation):
    """A CPU inference runtime fed the ONNX export of the case's nn module."""

    inference_only = True
    packages: tuple[str, ...] = ()

    def unavailable_reason(self, case: Case, device: torch.device) -> str | None:
        missing = [package for package in ("onnx", *self.packages) if importlib.util.find_spec(package) is None]
        if missing:
            return f"{', '.join(missing)} not installed (pip install 'fastrnn[peers]')"
        if device.type != "cpu":
            return "a CPU runtime: timed in CPU runs only"
        if case.torch_dtype != torch.float32:
            return "run on float32 cases only (the exported model's dtype)"
        if case.min_length_fraction is not None:
            return "this bench exports padded input only (no PackedSequence through torch.onnx.export)"
        if case.decoder:
            return "a decoder calls its cell from Python once per step: no exported graph runs that loop"
        return None

    def build(self, torch_module):
        example = torch.zeros(2, 1, torch_module.input_size, dtype=torch.float32)
        return _RuntimeModule(self.session(export_onnx(torch_module, example), torch.get_num_threads()))

    def session(self, model: bytes, threads: int):
        """A callable: a float32 numpy input -> the list of numpy outputs."""
        raise NotImplementedError


class _RuntimeModule(nn.Module):
    """nn.LSTM/nn.GRU's call signature (without an initial state) over a runtime's session."""

    def __init__(self, run):
        super().__init__()
        self.run = run

    def forward(self, x, hx=None):
        if hx is not None:
            raise ValueError("the exported model takes no initial state")
        output, *states = (torch.from_numpy(array) for array in self.run(x.detach().numpy()))
        return output, (tuple(states) if len(states) == 2 else states[0])


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    description = ("ONNX Runtime (CPUExecutionProvider) on the ONNX export of nn: intra-op threads = the bench's, "
                   "inter-op 1, sequential execution")
    packages = ("onnxruntime",)

    def session(self, model, threads):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"x": x})


class OpenVINO(Runtime):
    """OpenVINO's CPU plugin, at fp32 (INFERENCE_PRECISION_HINT f32) or at its default precision, which is bf16
    on CPUs with AVX512_BF16 or AMX."""

    packages = ("openvino",)

    def __init__(self, bf16: bool = False):
        self.bf16 = bf16
        self.name = "openvino-bf16" if bf16 else "openvino"
        self.description = ("OpenVINO (CPU plugin) on the ONNX export of nn at its default precision (bf16 here: "
                            "checked against nn run in bfloat16)" if bf16 else
                            "OpenVINO (CPU plugin) on the ONNX export of nn, INFERENCE_PRECISION_HINT f32") + \
            ", INFERENCE_NUM_THREADS = the bench's threads, LATENCY hint"
        self.bar_dtype = torch.bfloat16 if bf16 else None

    def unavailable_reason(self, case, device):
        reason = super().unavailable_reason(case, device)
        if reason is None and self.bf16:
            import openvino

            default = str(openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
            if "bf16" not in default and "bfloat16" not in default:
                reason = f"OpenVINO's default CPU precision here is {default}, not bf16: the openvino row is that"
        return reason

    def session(self, model, threads):
        import openvino

        core = openvino.Core()
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if not self.bf16:
            config["INFERENCE_PRECISION_HINT"] = "f32"
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "model.onnx"
            path.write_bytes(model)
            compiled = core.compile_model(core.read_model(path), "CPU", config)
        request = compiled.create_infer_request()
        outputs = compiled.outputs

        def run(x):
            results = request.infer({0: x})  # copies the outputs into fresh numpy arrays (share_outputs=False)
            return [results[output] for output in outputs]
        return run


def all_peers() -> list[Implementation]:
    return [OnnxRuntime(), OpenVINO(), OpenVINO(bf16=True)]
