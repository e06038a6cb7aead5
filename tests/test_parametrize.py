"""Parametrized weights (torch.nn.utils.parametrizations: weight_norm, spectral_norm, orthogonal) on every
backend: outputs, states and gradients equal nn.LSTM/nn.GRU with the same parametrizations, and the
gradients reach the parametrizations' original Parameters.

fastrnn reads each weight once per forward. nn.LSTM reads a parametrized weight several times (each read
of a spectral_norm'ed weight steps its power iteration in training mode), so it is compared here inside
parametrize.cached(), where every read within the forward shares one computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import fastrnn

from conftest import DEVICES, compare, detached, make_pair, random_inputs, run, skip_unavailable

PARAMETRIZATIONS = {
    "weight_norm": parametrizations.weight_norm,
    "spectral_norm": parametrizations.spectral_norm,
    "orthogonal": parametrizations.orthogonal,
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["aten", "reference", "cpp", "triton", "cuda"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("kind", PARAMETRIZATIONS)
def test_parametrized_weights_match_torch(device, backend, cell, kind):
    skip_unavailable(backend, device)
    torch.manual_seed(5)
    ours, theirs = make_pair(cell, backend, device, torch.float64, input_size=3, hidden_size=5, num_layers=2,
                             bidirectional=True)
    names = ("weight_hh_l0", "weight_ih_l1_reverse")
    for module in (ours, theirs):
        for name in names:
            PARAMETRIZATIONS[kind](module, name)
    theirs.load_state_dict(ours.state_dict())  # the same originals (and spectral_norm's power-iteration vectors)
    x, hx = random_inputs(ours, 3, 4, lengths=[4, 2, 3], device=device, seed=6)
    got = run(ours, *detached(x, hx))
    with parametrize.cached():
        expected = run(theirs, *detached(x, hx))
    errors = compare(got, expected)
    assert max(errors.values()) < 1e-10, errors
    buffers = dict(theirs.named_buffers())  # spectral_norm's vectors: one power-iteration step on each side
    assert all(torch.equal(value, buffers[name]) for name, value in ours.named_buffers())
    assert ours.last_backend == backend
    originals = [key for key in got if key.startswith("d_parametrizations.")]
    assert {key.split(".")[1] for key in originals} == set(names)
    assert all(got[key].abs().sum() > 0 for key in originals)


def test_convert_refuses_parametrized_modules_and_says_what_to_do():
    model = nn.Sequential(parametrizations.weight_norm(nn.LSTM(3, 4), "weight_hh_l0"))
    with pytest.raises(ValueError, match="weight_hh_l0.*convert the model first, then register"):
        fastrnn.convert(model)
