"""DistributedDataParallel over fastrnn's layers and cells (two CPU processes, gloo): the same averaged
gradients, and the same parameters after optimizer steps, as DDP over nn's modules on the same data."""

import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import fastrnn
from fastrnn import backends

WORLD = 2
STEPS, BATCH, INPUT, HIDDEN = 4, 3, 5, 6


class Decoder(nn.Module):
    """A loop of cell calls, as a decoder makes them."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, x):
        state, outputs = None, []
        for x_t in x:
            state = self.cell(x_t, state)
            outputs.append(state[0] if isinstance(state, tuple) else state)
        return torch.stack(outputs)


def pairs():
    """(name, nn's module, fastrnn's twin) for each kind of model."""
    made = []
    for name, theirs_type, ours_type, extra in (
            ("LSTM", nn.LSTM, fastrnn.LSTM, dict(num_layers=2, bidirectional=True)),
            ("GRU", nn.GRU, fastrnn.GRU, dict(num_layers=2)),
            ("RNN", nn.RNN, fastrnn.RNN, dict(nonlinearity="relu")),
            ("LSTMCell", nn.LSTMCell, fastrnn.LSTMCell, {}),
            ("GRUCell", nn.GRUCell, fastrnn.GRUCell, {})):
        torch.manual_seed(0)
        theirs = theirs_type(INPUT, HIDDEN, **extra).double()
        ours = ours_type(INPUT, HIDDEN, **extra, backend="cpp").double()
        ours.load_state_dict(theirs.state_dict())
        if name.endswith("Cell"):
            theirs, ours = Decoder(theirs), Decoder(ours)
        made.append((name, theirs, ours))
    return made


def train(module, rank):
    """Two optimizer steps on this rank's data; the gradients of the last one and the final parameters."""
    model = DistributedDataParallel(module)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(2):
        torch.manual_seed(100 * step + rank)
        x = torch.randn(STEPS, BATCH, INPUT, dtype=torch.float64)
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        optimizer.zero_grad()
        out.sin().sum().backward()
        optimizer.step()
    return [p.grad.clone() for p in module.parameters()] + [p.detach().clone() for p in module.parameters()]


def worker(rank, init_file, failures):
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
        torch.set_num_threads(1)
        for name, theirs, ours in pairs():
            expected, found = train(theirs, rank), train(ours, rank)
            for e, f in zip(expected, found, strict=True):
                torch.testing.assert_close(f, e, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")
        dist.destroy_process_group()
    except BaseException:
        failures.put(f"rank {rank}: {traceback.format_exc()}")
        raise


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available")
@pytest.mark.skipif(backends.unavailable_reason("cpp", "cpu") is not None, reason="the cpp backend is unavailable")
def test_ddp_matches_nn(tmp_path):
    context = mp.get_context("spawn")
    failures = context.SimpleQueue()
    processes = [context.Process(target=worker, args=(rank, str(tmp_path / "init"), failures)) for rank in range(WORLD)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=240)
        if process.exitcode is None:  # hung: stop it rather than leave it behind
            process.kill()
    assert all(process.exitcode == 0 for process in processes), failures.get() if not failures.empty() else \
        f"exit codes {[process.exitcode for process in processes]}"
