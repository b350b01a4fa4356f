"""Property test: random small CNNs from a grammar (residual, concat, split, depthwise, grouped,
SE, flatten→linear) with random switches always convert, are exact at full width, give the right
output shape at every switch, and export to plain models equal to the slimmable one."""
from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import slimify
from tests.grammar import GrammarNet, cnn_specs

switch_sets = st.lists(st.sampled_from([0.2, 0.25, 0.3, 0.5, 0.6, 0.75, 0.9]), min_size=1, max_size=3,
                       unique=True).map(lambda s: tuple(sorted(s)) + (1.0,))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=cnn_specs, switches=switch_sets, divisor=st.sampled_from([1, 4, 8]))
def test_random_cnn(spec, switches, divisor) -> None:
    torch.manual_seed(0)
    model = GrammarNet(spec).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    slimify.convert(model, switches=switches, divisor=divisor, example_input=x[:1])
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5 * float(expected.abs().max()) + 1e-7)
        for w in switches:
            with slimify.width(model, w):
                out = model(x)
            assert out.shape == expected.shape
            plain = slimify.export(model, w)
            assert not slimify.is_slimmable(plain)
            assert torch.allclose(plain(x), out, atol=1e-4 * float(out.abs().max()) + 1e-7)
