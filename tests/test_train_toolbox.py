"""Recipes with timm's toolbox: optimizer groups and layer decay, timm schedules, lr scaling by the
global batch, Mixup/CutMix soft targets with in-place distillation, EMA, gradient accumulation,
bfloat16 autocast on CPU, channels-last, torch.compile, drop-path and augmentation keys."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import Subset

from slimify.errors import SlimifyError
from slimify.train import digits, finetune
from slimify.train.checkpoint import load_checkpoint
from slimify.train.losses import distill_loss, switch_loss
from slimify.train.recipe import Recipe, load_recipe
from slimify.train.testing import slim_digitsnet
from slimify.train.timm_optim import create_optimizer, create_schedule, global_lr

pytestmark = pytest.mark.usefixtures("one_thread")


def _decay_of(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, float]:
    by_id = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters()}


@pytest.mark.parametrize("keys", [{"opt": "adamw"}, {"optimizer": "adamw"}])
def test_no_weight_decay_on_norms_biases_and_pos_embed(keys) -> None:
    import timm

    vit = timm.create_model("test_vit", num_classes=10)
    decay = _decay_of(create_optimizer(vit, load_recipe(keys, lr=1e-3, weight_decay=0.05)), vit)
    assert decay["pos_embed"] == decay["cls_token"] == decay["blocks.0.norm1.weight"] == 0.0
    assert decay["blocks.0.attn.qkv.bias"] == 0.0 and decay["blocks.0.attn.qkv.weight"] == 0.05


@pytest.mark.parametrize("sched", [None, "cosine"])
def test_layer_decay_scales_lr_by_depth(sched) -> None:
    import timm

    vit = timm.create_model("test_vit", num_classes=10)
    r = load_recipe({"opt": "adamw", "layer_decay": 0.5, "sched": sched}, lr=1e-3)
    opt = create_optimizer(vit, r)
    create_schedule(opt, r, steps_per_epoch=10)
    lrs = sorted({round(g["lr"], 12) for g in opt.param_groups})
    assert max(lrs) == pytest.approx(1e-3) and min(lrs) < 1e-3 / 4  # the head at lr, the stem decayed
    with pytest.raises(SlimifyError, match="layer_decay needs a timm model"):
        create_optimizer(nn.Sequential(nn.Linear(2, 2)), r)


def test_lr_follows_the_global_batch_like_timm() -> None:
    sgd, adam = Recipe(lr_base=0.1, batch_size=64), Recipe(lr_base=1e-3, batch_size=64, opt="adamw")
    assert global_lr(sgd, world=2) == pytest.approx(0.1 * 128 / 256)  # linear
    assert global_lr(adam, world=4) == pytest.approx(1e-3 * (256 / 256) ** 0.5)
    assert global_lr(adam.replace(accum_steps=4), world=1) == pytest.approx(1e-3)  # 64 x 4 = 256
    assert global_lr(sgd.replace(lr=0.3), world=8) == 0.3  # a given lr is used as written


def test_timm_cosine_with_warmup_and_its_state_round_trip() -> None:
    model = nn.Linear(4, 2)
    r = load_recipe({"sched": "cosine", "warmup_epochs": 1, "epochs": 4, "min_lr": 0.001, "warmup_lr": 0.01}, lr=0.1)
    opt = create_optimizer(model, r)
    sched = create_schedule(opt, r, steps_per_epoch=10)
    lrs = [sched.get_last_lr()[0]]
    for _ in range(40):
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert lrs[0] == pytest.approx(0.01) and max(lrs) == pytest.approx(0.1, rel=0.1)  # timm: warm-up inside the cosine
    assert lrs[5] < lrs[10] and lrs[20] > lrs[30] > lrs[40] and lrs[40] == pytest.approx(0.001, abs=1e-3)
    again = create_schedule(create_optimizer(model, r), r, steps_per_epoch=10)
    again.load_state_dict(sched.state_dict())
    assert again.get_last_lr()[0] == pytest.approx(lrs[40])


def test_soft_targets_combine_with_in_place_distillation() -> None:
    logits, teacher = torch.randn(4, 10), torch.randn(4, 10)
    soft = torch.softmax(torch.randn(4, 10), dim=-1)
    widest = switch_loss(logits, soft, None, "distill")
    assert widest == pytest.approx(float(-(soft * torch.log_softmax(logits, -1)).sum(-1).mean()))
    assert switch_loss(logits, soft, teacher, "distill") == pytest.approx(float(distill_loss(logits, teacher)))
    assert switch_loss(logits, soft, teacher, "labels") == pytest.approx(float(widest))


def test_mixup_cutmix_ema_bf16_channels_last_and_accumulation_train_together(tmp_path) -> None:
    model = slim_digitsnet(switches=(0.5, 1.0))
    seen: list[torch.dtype] = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype) if torch.is_grad_enabled() else None)
    result = finetune(model, digits("train"), "demo", val_data=digits("val"), out_dir=tmp_path, epochs=1, lr=0.05,
                      mixup=0.8, cutmix=1.0, smoothing=0.1, ema_decay=0.9, accum_steps=2, amp_dtype="bfloat16",
                      channels_last=True, calibrate_batches=2, baseline=False)
    assert result.step == -(-(1437 // 64) // 2)  # one update per two batches, the last (odd) one too
    assert set(seen) == {torch.bfloat16}  # autocast on CPU
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    ema = result.ema_model
    assert ema is not None and ema is not model and [r.width for r in result.eval_ema.rows] == [1.0, 0.5]
    assert not torch.equal(ema[0].weight, model[0].weight)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert torch.equal(saved["ema"]["0.weight"], ema[0].weight.detach().cpu())
    assert all(torch.isfinite(torch.tensor(v)) for v in result.losses.values())


class _NoBN(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 8, 3, 2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def test_accumulating_two_half_batches_equals_one_full_batch() -> None:
    weights = []
    for batch, accum in ((64, 1), (32, 2)):
        torch.manual_seed(0)
        model = _NoBN()
        finetune(model, digits("train"), "demo", epochs=1, batch_size=batch, accum_steps=accum, stop_after=5,
                 calibrate_batches=0, grad_clip=None, warmup_epochs=0.0)
        weights.append(model[0].weight.detach().clone())
    assert torch.allclose(weights[0], weights[1], atol=1e-5)


def test_compile_with_a_test_backend_saves_plain_keys_and_resumes_uncompiled(tmp_path) -> None:
    model = slim_digitsnet(switches=(0.5, 1.0))
    finetune(model, digits("train"), "demo", out_dir=tmp_path, epochs=1, stop_after=2, compile="aot_eager",
             calibrate_batches=0)
    keys = list(load_checkpoint(tmp_path / "checkpoint.pt")["model"])
    assert keys and not any(k.startswith(("_orig_mod.", "module.")) for k in keys)
    resumed = finetune(slim_digitsnet(switches=(0.5, 1.0)), digits("train"), "demo", out_dir=tmp_path, epochs=1,
                       stop_after=3, resume=True, calibrate_batches=0)
    assert resumed.step == 3
    with pytest.raises(SlimifyError, match="unknown torch.compile backend"):
        finetune(slim_digitsnet(), digits("train"), "demo", compile="no-such-backend", stop_after=1)


def test_drop_path_rescales_timm_stochastic_depth() -> None:
    import timm

    from slimify.train.drop_path import drop_path_modules, set_drop_path

    net = timm.create_model("test_convnext", drop_path_rate=0.05, num_classes=10)
    set_drop_path(net, 0.2)
    probs = [m.drop_prob for m in drop_path_modules(net)]
    assert max(probs) == pytest.approx(0.2) and probs == sorted(probs) and min(probs) > 0
    with pytest.raises(SlimifyError, match="needs a model with stochastic depth"):
        set_drop_path(timm.create_model("test_convnext", num_classes=10), 0.1)


def test_augment_keys_reach_timms_training_transform() -> None:
    import timm

    from slimify.train.augment import augment_args
    from slimify.train.data import model_transform

    r = load_recipe({"auto_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25})
    for net in (timm.create_model("test_resnet", num_classes=10), nn.Conv2d(3, 4, 3)):
        tf = model_transform(net, train=True, input_size=64, augment=augment_args(r))
        names = [type(t).__name__ for t in tf.transforms]
        assert "RandAugment" in names and "RandomErasing" in names
        assert tf(Image.new("RGB", (90, 70))).shape == (3, 64, 64)


@pytest.mark.parametrize("data, message", [
    ({"opt": "adamz"}, "did you mean 'adam'"),
    ({"sched": "cosinus"}, "'sched' must be one of"),
    ({"amp_dtype": "fp8"}, "'amp_dtype' must be one of null, float16, bfloat16, float32"),
    ({"mixup": -0.1}, "'mixup' must be >= 0"),
    ({"ema_decay": 1.5}, "'ema_decay' must be in [0, 1]"),
    ({"auto_augment": "randaug"}, "'auto_augment' must be a timm policy"),
    ({"compile": ""}, "'compile' must be true, false or a torch.compile backend"),
    ({"mixup_alpha": 0.2}, "unknown key 'mixup_alpha'"),
    ({"cutmix": 1.0, "batch_size": 63}, "must be even with mixup/cutmix"),
])
def test_bad_toolbox_values_name_the_key(data, message) -> None:
    with pytest.raises(SlimifyError) as e:
        load_recipe(data)
    assert message in str(e.value)


def test_no_graph_breaks_at_any_switch_in_training_or_no_grad_inference() -> None:
    from torch import _dynamo

    import slimify

    model, x = slim_digitsnet(switches=(0.5, 1.0)), torch.randn(2, 3, 32, 32)
    for w in (1.0, 0.5):
        for grad, train in ((True, True), (False, False)):
            _dynamo.reset()
            with slimify.width(model, w), torch.set_grad_enabled(grad):
                explained = _dynamo.explain(model.train(train))(x)
            assert (explained.graph_count, explained.graph_break_count) == (1, 0), (w, grad)


def test_wrapper_prefixes_are_stripped() -> None:
    from slimify.train.compile import strip_wrapper_prefixes

    t = torch.zeros(1)
    assert strip_wrapper_prefixes({"module._orig_mod.a": t, "module._orig_mod.b": t}) == {"a": t, "b": t}
    assert strip_wrapper_prefixes({"_orig_mod.a": t, "c": t}) == {"_orig_mod.a": t, "c": t}  # not every key


@pytest.mark.parametrize("name", ["retrofit_resnet50_imagenet", "retrofit_mobilenet_v2_imagenet",
                                  "retrofit_deit_small_imagenet", "retrofit_convnext_tiny_imagenet"])
def test_shipped_retrofit_recipes_run_a_step(name) -> None:
    """Each key of the ImageNet retrofit recipes works together (one step of a tiny timm model; no compile)."""
    import timm

    model = timm.create_model("test_convnext", num_classes=10, drop_path_rate=0.05)
    result = finetune(model, Subset(digits("train"), range(64)), name, epochs=1, batch_size=16, stop_after=2,
                      compile=False, workers=0, calibrate_batches=0)
    assert result.step == 2 and all(torch.isfinite(torch.tensor(v)) for v in result.losses.values())
