"""Hypothesis-driven shapes and options: the reference backend agrees with nn.LSTM / nn.GRU in float64."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import compare, detached, make_pair, random_inputs, run


@st.composite
def cases(draw):
    cell = draw(st.sampled_from(["LSTM", "GRU"]))
    hidden = draw(st.integers(1, 12))
    config = dict(
        input_size=draw(st.integers(1, 12)),
        hidden_size=hidden,
        num_layers=draw(st.integers(1, 3)),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
    )
    if cell == "LSTM" and hidden > 1 and draw(st.booleans()):
        config["proj_size"] = draw(st.integers(1, hidden - 1))
    batch, seq_len = draw(st.integers(1, 6)), draw(st.integers(1, 9))
    mode = draw(st.sampled_from(["batched", "unbatched", "packed"]))
    lengths = None
    if mode == "packed":
        lengths = draw(st.lists(st.integers(1, seq_len), min_size=batch, max_size=batch))
        lengths[draw(st.integers(0, batch - 1))] = seq_len
    return cell, config, batch, seq_len, mode, lengths, draw(st.booleans()), draw(st.integers(0, 2**31 - 1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_random_configurations_match_torch(case):
    cell, config, batch, seq_len, mode, lengths, with_state, seed = case
    torch.manual_seed(seed)
    ours, theirs = make_pair(cell, "reference", **config)
    x, hx = random_inputs(ours, batch, seq_len, lengths=lengths, unbatched=mode == "unbatched",
                          with_state=with_state, seed=seed)
    errors = compare(run(ours, *detached(x, hx)), run(theirs, *detached(x, hx)))
    assert max(errors.values()) < 1e-10, errors
