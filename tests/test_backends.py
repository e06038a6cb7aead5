"""Backend selection, its report, torch.compile tracing, and autocast."""

from __future__ import annotations

import pytest
import torch

import fastrnn
from fastrnn import backends

from conftest import CUDA_SKIP, compare, detached, make_pair, random_inputs, rel_error, run


def _cpp_runs() -> bool:
    return backends.unavailable_reason("cpp", "cpu") is None and fastrnn._ext.unavailable_reason() is None


@pytest.mark.parametrize("cell,batch,hidden,packed,expected", [
    ("GRU", 32, 512, False, "cpp"),         # torch's CPU GRU is a generic per-step path: cpp for every shape
    ("LSTM", 8, 400, True, "cpp"),          # likewise torch's packed LSTM
    ("LSTM", 2, 16, False, "cpp"),          # a small padded LSTM: the per-step cost dominates
    ("LSTM", 64, 512, False, "aten"),       # a large padded one: oneDNN
])
def test_auto_on_cpu_follows_the_measured_rule(cell, batch, hidden, packed, expected):
    if expected == "cpp" and not _cpp_runs():
        pytest.skip(f"the cpp backend cannot run here: {backends.unavailable_reason('cpp', 'cpu') or fastrnn._ext.unavailable_reason()}")
    model = getattr(fastrnn, cell)(3, hidden)
    x = torch.randn(4, batch, 3)
    if packed:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.randint(1, 5, (batch,)), enforce_sorted=False)
    assert model.selected_backend(input=x) == expected
    model(x)
    assert model.last_backend == expected
    report = fastrnn.explain("cpu")
    for name in ("cuda", "triton", "cpp", "reference", "aten"):
        assert name in report
    assert f"batch x hidden <= {backends.auto.LSTM_CPP_MAX_BATCH_X_HIDDEN}" in report


def test_auto_runs_the_cpp_lstm_for_inferences_up_to_batch_8_and_leaves_their_training_to_onednn():
    if not _cpp_runs():
        pytest.skip("the cpp backend cannot run here")
    model = fastrnn.LSTM(3, 512)
    x = torch.randn(4, backends.auto.LSTM_CPP_INFERENCE_MAX_BATCH, 3)
    with torch.no_grad():
        assert model.selected_backend(input=x) == "cpp"
        model(x)
        assert model.last_backend == "cpp"
        assert model.selected_backend(input=torch.randn(4, backends.auto.LSTM_CPP_INFERENCE_MAX_BATCH + 1, 3)) == "aten"
    assert model.selected_backend(input=x) == "aten"  # records a backward: training
    model(x)
    assert model.last_backend == "aten"


def _auto_table(report: str) -> dict[str, tuple[str, str, str]]:
    """explain()'s auto table: kind of workload -> (eager, compiled training, compiled inference)."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == ["workload", "eager", "compiled:", "training",
                                                                      "compiled:", "inference"]) + 1
    table = {}
    for line in lines[start:]:
        cells = [cell for cell in line.strip().split("  ") if cell]
        if len(cells) != 4:
            break
        table[cells[0].strip()] = tuple(cell.strip() for cell in cells[1:])
    return table


SMALL = backends.auto.LSTM_CPP_MAX_BATCH_X_HIDDEN
INFER = backends.auto.LSTM_CPP_INFERENCE_MAX_BATCH
TRAIN = backends.auto.LSTM_CPP_TRAINING_MAX_BATCH
DTYPE_NAMES = "float32/float64"
IN_STEPS = (f"LSTM, {DTYPE_NAMES}, padded, inference, no proj_size, its projection inside the steps (fastrnn.explain's "
            "input projections)")


@pytest.mark.parametrize("batch,hidden,threads,expected", [
    (32, 64, 1, "cpp"),
    (128, 256, 1, "cpp"),  # W_ih and W_hh 1.06 MB: the large batches' 2 MiB
    (9, 256, 2, "cpp"),  # half of them per thread, within 1 MiB
    (9, 256, 1, "aten"),  # all of them on one thread, at a batch under 32
    (9, 512, 2, "aten"),  # too wide
    (40, 600, 2, "aten"),  # too wide for the large batches' 2 MiB too
])
def test_auto_runs_lstm_inferences_on_the_cpp_kernels_where_their_projection_runs_in_the_steps(batch, hidden, threads,
                                                                                               expected):
    if not _cpp_runs():
        pytest.skip("the cpp backend cannot run here")
    model = fastrnn.LSTM(3, hidden)
    x = torch.randn(5, batch, 3)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            assert model.selected_backend(input=x) == expected
            model(x)
            assert model.last_backend == expected
        assert model.selected_backend(input=x) == "aten"  # records a backward: training stays on oneDNN
    finally:
        torch.set_num_threads(before)
    if threads == 2 and expected == "cpp" and batch < 32:  # auto's kept choice follows a change of the thread count
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                assert model.selected_backend(input=x) == "aten"
        finally:
            torch.set_num_threads(before)
    assert _auto_table(fastrnn.explain("cpu"))[IN_STEPS][0] == "cpp"


# The bfloat16 rows of auto's rule differ by how fast this CPU's pair products are (backends/auto.py).
OTHERWISE = "LSTM, GRU or RNN in bfloat16/float16 otherwise"
if backends.auto.pair_products_are_fast():
    _ANY, _BATCH_1, _TRAINING = (kind for kind, _ in backends.auto.bfloat16_kinds())
    BFLOAT16_ROWS = [("GRU", torch.bfloat16, 64, 512, False, _ANY), ("RNN_TANH", torch.bfloat16, 3, 10, True, _ANY),
                     ("RNN_RELU", torch.bfloat16, 128, 256, False, _ANY), ("LSTM", torch.bfloat16, 1, 40, False, _BATCH_1),
                     ("LSTM", torch.bfloat16, 8, 40, False, _TRAINING), ("LSTM", torch.bfloat16, 64, 512, False, _TRAINING),
                     ("LSTM", torch.bfloat16, 32, 256, False, OTHERWISE)]
else:
    BFLOAT16_ROWS = [
        ("GRU", torch.bfloat16, 32, 256, False, "GRU in bfloat16, batch x hidden <= 8192, T > 1"),
        ("RNN_TANH", torch.bfloat16, 64, 512, False, "RNN (tanh, relu) in bfloat16, batch x hidden <= 32768, T > 1"),
        ("RNN_RELU", torch.bfloat16, 3, 10, True, "RNN (tanh, relu) in bfloat16, batch x hidden <= 32768, T > 1"),
        ("LSTM", torch.bfloat16, 1, 4, False, OTHERWISE),
        ("GRU", torch.bfloat16, 64, 256, False, OTHERWISE),
    ]


# Concrete workloads, each with the kind of explain()'s table it belongs to.
@pytest.mark.parametrize("cell,dtype,batch,hidden,packed,kind", [
    ("GRU", torch.float32, 1, 8, False, f"GRU, {DTYPE_NAMES}, any shape"),
    ("GRU", torch.float64, 33, 200, False, f"GRU, {DTYPE_NAMES}, any shape"),
    ("GRU", torch.float32, 16, 100, True, f"GRU, {DTYPE_NAMES}, any shape"),
    ("LSTM", torch.float32, 20, 300, True, f"LSTM, {DTYPE_NAMES}, packed (PackedSequence)"),
    ("LSTM", torch.float64, 1, 5, True, f"LSTM, {DTYPE_NAMES}, packed (PackedSequence)"),
    ("LSTM", torch.float32, 1, SMALL, False, f"LSTM, {DTYPE_NAMES}, padded, batch 1"),
    ("LSTM", torch.float64, 1, 300, False, f"LSTM, {DTYPE_NAMES}, padded, batch 1"),
    ("LSTM", torch.float64, 4, SMALL // 4, False, f"LSTM, {DTYPE_NAMES}, padded, batch x hidden <= {SMALL}"),
    ("LSTM", torch.float32, 8, 300, False, f"LSTM, {DTYPE_NAMES}, padded, inference, batch <= {INFER}"),
    ("LSTM", torch.float64, 2, SMALL, False, f"LSTM, {DTYPE_NAMES}, padded, inference, batch <= {INFER}"),
    ("LSTM", torch.float64, 30, 70, False, IN_STEPS),
    ("LSTM", torch.float32, 128, 256, False, IN_STEPS),
    ("LSTM", torch.float32, 9, 512, False, f"LSTM, {DTYPE_NAMES}, padded, inference, batch > {INFER} and batch x "
     f"hidden > {SMALL}, otherwise"),
    ("LSTM", torch.float64, 40, 400, False, f"LSTM, {DTYPE_NAMES}, padded, inference, batch > {INFER} and batch x "
     f"hidden > {SMALL}, otherwise"),
    ("LSTM", torch.float32, 2, SMALL, False, f"LSTM, {DTYPE_NAMES}, padded, training, batch <= {TRAIN}"),
    ("LSTM", torch.float64, TRAIN, 300, False, f"LSTM, {DTYPE_NAMES}, padded, training, batch <= {TRAIN}"),
    ("LSTM", torch.float32, TRAIN + 1, SMALL, False, f"LSTM, {DTYPE_NAMES}, padded, training, batch > {TRAIN} and "
     f"batch x hidden > {SMALL}"),
    ("LSTM", torch.float32, 8, 300, False, f"LSTM, {DTYPE_NAMES}, padded, training, batch > {TRAIN} and batch x "
     f"hidden > {SMALL}"),
    *BFLOAT16_ROWS,
    ("LSTM", torch.bfloat16, 8, 4, False, "LSTM, GRU or RNN in bfloat16/float16 otherwise"),
    ("LSTM", torch.bfloat16, 1, 4, True, "LSTM, GRU or RNN in bfloat16/float16 otherwise"),
    ("GRU", torch.float16, 8, 40, False, "LSTM, GRU or RNN in bfloat16/float16 otherwise"),
])
def test_explain_says_what_auto_runs_for_each_kind_of_workload(cell, dtype, batch, hidden, packed, kind):
    """Each row's eager choice for a forward of its kind: one that records a backward where the row says
    training, else an inference (torch.no_grad), as auto tells them apart."""
    eager, compiled_training, compiled_inference = _auto_table(fastrnn.explain("cpu"))[kind]
    training = ", training," in kind
    if cell.startswith("RNN_"):
        model = fastrnn.RNN(3, hidden, nonlinearity=cell[4:].lower(), dtype=dtype)
    else:
        model = getattr(fastrnn, cell)(3, hidden, dtype=dtype)
    x = torch.randn(6, batch, 3, dtype=dtype)
    if packed:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.randint(1, 7, (batch,)), enforce_sorted=False)
    workload = backends.Workload(cell, dtype, batch, hidden, packed, training=training)
    available = lambda name: backends.unavailable_reason(name, "cpu") is None  # noqa: E731  (what explain() asks)
    assert backends.auto.choose(torch.device("cpu"), workload, False, available) == eager
    if available("cpp") and _cpp_runs():  # the layer's own choice, where the kernels it may pick can run
        with torch.set_grad_enabled(training):
            assert model.selected_backend(input=x) == eager
        # Under torch.compile the layer resolves once, without the shape, then may hand an inference to torch.
        assert backends.resolve_while_compiling("auto", "cpu") == compiled_training
        if not packed:
            with torch.no_grad():
                runs_torch = model.eval()._compiled_inference_prefers_torch(x, None)
            assert (compiled_inference == "aten") == runs_torch
            if not runs_torch:
                assert compiled_inference == compiled_training
        else:
            assert compiled_inference == compiled_training  # packed input never takes torch's opaque op


def test_explain_has_one_row_per_kind_of_workload_the_rule_tells_apart():
    table = _auto_table(fastrnn.explain("cpu"))
    assert list(table) == [kind for kind, _ in backends.auto.kinds(torch.device("cpu"))]
    assert len(set(table.values())) > 1  # the rule's outcome depends on the workload, and the table shows it
    assert list(_auto_table(fastrnn.explain("cuda"))) == ["any LSTM, GRU or RNN, any shape and dtype"]


def test_resolve_while_compiling_is_marked_constant_as_torchs_decorator_marks():
    def probe():
        return "cpp"

    marked = torch.compiler.assume_constant_result(probe)
    marks = {name: value for name, value in vars(marked).items() if name.startswith("_dynamo")}
    assert marks, "torch.compiler.assume_constant_result set no attribute: update backends.resolve_while_compiling"
    assert {name: getattr(backends.resolve_while_compiling, name, None) for name in marks} == marks


def test_auto_on_cpu_keeps_torchs_code_for_a_bfloat16_lstm_inference_beyond_batch_1():
    model = fastrnn.LSTM(3, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the CPU LSTM computes in bfloat16 here
        model(torch.randn(5, 2, 3))
    assert model.last_backend == "aten"


def test_auto_on_cpu_falls_back_to_torchs_code_when_the_kernels_cannot_be_built(monkeypatch):
    monkeypatch.setattr(fastrnn._ext, "unavailable_reason", lambda: "no C++ compiler (simulated)")
    model = fastrnn.GRU(3, 4)
    model(torch.randn(5, 2, 3))
    assert model.last_backend == "aten"


def test_explicit_backend_is_used_and_recorded():
    model = fastrnn.GRU(3, 4, backend="reference")
    model(torch.randn(2, 1, 3))
    assert model.last_backend == "reference" and "backend='reference'" in repr(model)


@CUDA_SKIP
def test_auto_on_cuda_takes_the_first_measured_kernel_that_runs():
    expected = next((n for n in backends.auto.CUDA_ORDER if backends.unavailable_reason(n, "cuda") is None), "aten")
    assert backends.resolve("auto", "cuda") == expected


# Packed input: with unsorted lengths the batch size is a shape (sorted_indices); sorted and without hx
# it is only batch_sizes[0]'s value, which the padding op turns into a size known at run time.
LAYOUTS = {"padded": dict(), "packed_unsorted": dict(lengths=[3, 6, 1, 5]),
           "packed_sorted_no_state": dict(lengths=[6, 5, 3, 1], enforce_sorted=True, with_state=False),
           "packed_sorted": dict(lengths=[6, 5, 3, 1], enforce_sorted=True)}


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_compile_traces_without_graph_break(cell, backend, layout):
    """fullgraph=True fails on any graph break; aot_eager traces forward and backward through the
    custom ops' fake implementations without generating code. Outputs, states and every gradient
    equal eager's."""
    torch.manual_seed(0)
    ours, _ = make_pair(cell, backend, dtype=torch.float32, input_size=3, hidden_size=5, num_layers=2,
                        bidirectional=True, batch_first=True)
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x, hx = random_inputs(ours, 4, 6, dtype=torch.float32, seed=1, **LAYOUTS[layout])
    eager = run(ours, *detached(x, hx))
    traced = run(compiled, *detached(x, hx))
    errors = compare(traced, eager)
    assert max(errors.values()) < 1e-6, errors


def test_torch_compile_of_packed_input_checks_hx_against_batch_sizes():
    """Traced, the batch of sorted packed input is taken from hx; the padding op checks it when it runs."""
    ours = fastrnn.GRU(3, 5, backend="reference")
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x, _ = random_inputs(ours, 4, 6, lengths=[6, 5, 3, 1], enforce_sorted=True, dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"hidden states for 4 sequences .*batch_sizes\[0\].*got states for 3"):
        compiled(x, torch.randn(1, 3, 5))


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_autocast_runs_in_low_precision_like_torch(cell):
    """Under CPU autocast (bfloat16) outputs and states come back in the dtype nn.LSTM/nn.GRU give, and
    their error against float32 is of the size of torch's own."""
    torch.manual_seed(0)
    ours, theirs = make_pair(cell, "reference", dtype=torch.float32, input_size=6, hidden_size=8, num_layers=2)
    x, hx = random_inputs(ours, 3, 9, dtype=torch.float32, seed=2)
    exact = run(theirs, *detached(x, hx))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_ours = run(ours, *detached(x, hx))
        low_torch = run(theirs, *detached(x, hx))
    assert low_ours["output"].dtype == low_torch["output"].dtype == (torch.bfloat16 if cell == "LSTM" else torch.float32)
    for name in ("output", "state0"):
        assert rel_error(low_ours[name], exact[name]) <= 2 * rel_error(low_torch[name], exact[name]) + 1e-3
    for name in exact:
        assert rel_error(low_ours[name], exact[name]) < 5e-2, name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without a GPU")
def test_kernel_backends_on_cuda_without_a_gpu_say_so():
    for name in ("cuda", "triton"):
        assert backends.unavailable_reason(name, "cuda") == "no CUDA GPU is visible to torch"
    assert backends.resolve("auto", "cuda") == "aten"


def test_dynamo_refuses_subclasses_of_nn_lstm_so_fastrnn_is_not_one():
    """Why isinstance(fastrnn.LSTM(...), nn.LSTM) is False (README, "Use"): Dynamo refuses to trace any
    instance of nn.RNN/nn.GRU/nn.LSTM whose attributes a forward reads, whatever that forward does, unless
    torch._dynamo.config.allow_rnn (experimental) is set. Should a torch release lift this, this test
    fails: time to subclass."""

    class Subclass(torch.nn.LSTM):
        def forward(self, x, hx=None):
            return x @ self.weight_ih_l0.T, None

    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported, match="RNN, GRU, or LSTM"):
        torch.compile(Subclass(3, 4), fullgraph=True, backend="aot_eager")(torch.randn(5, 2, 3))
    layer = fastrnn.LSTM(3, 4)
    assert not isinstance(layer, torch.nn.LSTM) and layer.mode == torch.nn.LSTM(3, 4).mode == "LSTM"
