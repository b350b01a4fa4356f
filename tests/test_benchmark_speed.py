"""benchmarks.speed's forward variants: both ways of serving a width give the exported model's output."""
from __future__ import annotations

import pytest
import torch

import slimify
from benchmarks.speed import forward_calls, interleaved
from slimify.deploy.extract import export
from slimify.store.sources import create


@pytest.mark.parametrize("serving", ["held", "switched"])
def test_slim_calls_match_the_export_and_leave_the_model_at_full_width(serving: str) -> None:
    torch.manual_seed(0)
    model = create("slimify:tinynet").eval()
    original = create("slimify:tinynet").eval()
    x = torch.randn(2, 3, 32, 32)
    slimify.convert(model, switches=[0.5, 1.0], example_input=x)
    plains = {w: export(model, w).eval() for w in slimify.switches(model)}
    calls = forward_calls(original, model, plains, x, serving)
    assert set(calls) == {"original", "slim 0.5", "export 0.5", "slim 1", "export 1"}
    for w in plains:
        torch.testing.assert_close(calls[f"slim {w:g}"](), calls[f"export {w:g}"]())
    assert slimify.get_width(model) == 1.0  # held copies are set, the converted model is not
    times = interleaved(calls, runs=2, clock=lambda: 0.0)
    assert set(times) == set(calls)
