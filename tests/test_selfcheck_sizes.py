"""The self-check's shortcut on the meta device (check/skeleton.py ``_MetaSizes``): every cut
parameter, buffer and BatchNorm tensor gets an empty tensor of the size the rewrite would serve.
Checked against the rewrite itself, switch by switch, on models with BatchNorms, grouped and
depthwise convs, SE gates and attention (heads, a position embedding read elementwise)."""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision

from slimify.analysis.example_inputs import ExampleCall
from slimify.analysis.stages import analyze_model
from slimify.check.skeleton import Runner, skeleton
from slimify.rewrite.apply import rewrite
from slimify.rewrite.batchnorm import BN_TENSORS
from slimify.state import SlimState

MODELS = {
    "regnet_y": lambda: torchvision.models.regnet_y_400mf(weights=None),
    "mobilenet_v3": lambda: torchvision.models.mobilenet_v3_small(weights=None),
    "vit": lambda: timm.create_model("vit_tiny_patch16_224", img_size=64, pretrained=False),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_meta_sizes_are_the_sizes_the_rewrite_serves(name: str) -> None:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = torch.randn(1, 3, 64, 64)
    plan = analyze_model(model, example_input=x).plan
    served = skeleton(model, meta=True)
    state = SlimState(plan.switches)
    rewrite(served, plan, state)
    runner = Runner(model, ExampleCall.of(x, None), plan, recorded=None)
    assert runner.meta
    net, _, sizes = runner._rewritten(plan)
    assert sizes is not None
    tensors = list(plan.params) + [(path, n) for path in plan.batchnorms for n in BN_TENSORS[:4]]
    checked = 0
    for i, w in enumerate(plan.switches):
        state.select(w)
        sizes.select(i)
        for path, tensor in tensors:
            want = getattr(served.get_submodule(path), tensor, None)
            got = getattr(net.get_submodule(path), tensor, None)
            assert (want is None) == (got is None), (path, tensor)
            if want is not None:
                assert got.shape == want.shape, (w, path, tensor)
                checked += w < 1.0 and got.shape != torch.Size(getattr(model.get_submodule(path), tensor).shape)
    assert checked  # narrow switches really served narrow tensors
