"""The ``slimify reorder`` command: put the most important channels of pretrained weights first,
writing plain reordered weights (or, for a ``.slim`` output, the converted model)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from slimify.cli.app import command
from slimify.cli.data_options import DATA_HELP, data_config_of, data_config_options
from slimify.cli.model import (
    LiveHelpOption,
    RegistryChoice,
    check_one_image,
    check_output,
    conversion_options,
)
from slimify.ordering.registry import SCORES

__all__ = ["reorder_command", "WEIGHT_SUFFIXES"]

WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".pth")  # plain state-dict outputs


def _taylor_batches(data: str, net: Any, batches: int, batch_size: int, input_size: tuple[int, int, int] | None,
                    data_config: Any) -> list[Any]:
    """The first ``batches`` batches of ``data`` ('digits' or an image folder), in a fixed order."""
    import torch

    from slimify.train.resolve import resolve_data

    dataset = resolve_data(data, net, train=False, input_size=input_size, data_config=data_config)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    out = []
    for batch in loader:
        if len(out) >= batches:
            break
        out.append(batch)
    return out


def _write_weights(net: Any, out: Path, force: bool) -> None:
    import torch
    from safetensors.torch import save_file

    from slimify.store.atomic import atomic_path

    state, seen = {}, set()
    for name, value in net.state_dict().items():
        t = value.detach().cpu().contiguous()
        if t.numel() and t.data_ptr() in seen:  # safetensors refuses shared storage
            t = t.clone()
        seen.add(t.data_ptr())
        state[name] = t
    with atomic_path(out, overwrite=force) as tmp:
        if out.suffix.lower() == ".safetensors":
            save_file(state, str(tmp))
        else:
            torch.save(state, tmp)


@command("reorder", epilog="""\b
Examples:
  slimify reorder resnet18 --checkpoint rn18.pth --method l1 -o rn18_l1.safetensors
  slimify reorder torchvision:mobilenet_v2 --checkpoint mbv2.pth --method bn -o mbv2.slim
  slimify reorder slimify:digitsnet --checkpoint net.pt --method taylor --data digits \\
      --input-size 32 -o net_taylor.pt""")
@click.argument("model")
@conversion_options
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False),
              help="Pretrained plain weights to reorder (.safetensors, or a torch file read with weights_only).")
@click.option("--method", type=RegistryChoice(SCORES.names), default="bn", show_default=True, cls=LiveHelpOption,
              help_fn=lambda: "Importance score: " + "; ".join(f"{e.name}: {e.help}" for e in SCORES) + ".")
@click.option("--data", cls=LiveHelpOption, help_fn=lambda: "Data for a --method that needs it (" + ", ".join(
    SCORES.names(lambda e: e.options.get("needs_data"))) + f"): {DATA_HELP}.")
@click.option("--batches", type=click.IntRange(min=1), default=8, show_default=True,
              help="Batches of --data the Taylor score sums over.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Plain reordered weights (.safetensors/.pt/.pth), or a converted model (.slim).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@data_config_options
def reorder_command(model: str, switches: tuple[float, ...], divisor: int, num_classes: int | None,
                    input_size: tuple[int, int, int] | None, checkpoint: str | None, method: str, data: str | None,
                    batches: int, batch_size: int, output: str, force: bool, crop_pct: float | None,
                    mean: tuple[float, ...] | None, std: tuple[float, ...] | None, interpolation: str | None) -> None:
    """Permute each channel group of MODEL (a timm name, 'torchvision:NAME' or 'slimify:NAME',
    loaded from --checkpoint) so its most important channels come first. The network computes
    the same function; narrow switches of a later conversion start from the best channels.

    A .slim OUTPUT is converted with --switches/--divisor right away (no second reordering);
    plain weights feed 'slimify convert MODEL --checkpoint OUTPUT'."""
    import torch

    import slimify
    from slimify.analysis.stages import default_input
    from slimify.errors import SlimifyError
    from slimify.store.sources import create

    if Path(model).suffix == ".slim":
        raise SlimifyError(f"{model} is already slimmable: reorder the plain model (name + --checkpoint) "
                           "before converting")
    if SCORES.get(method).options.get("needs_data") and data is None:
        raise click.UsageError(f"--method {method} needs --data ({DATA_HELP})")
    out = check_output(output, force, WEIGHT_SUFFIXES + (".slim",))
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    net = create(model, checkpoint=checkpoint, **kwargs).eval()
    check_one_image(net)
    example = torch.randn(1, *input_size) if input_size else default_input(net)
    cfg = data_config_of(net, tuple(example.shape[1:]), crop_pct, mean, std, interpolation)
    batches_ = _taylor_batches(data, net, batches, batch_size, tuple(example.shape[1:]), cfg) \
        if data is not None else None
    if out.suffix == ".slim":
        slimify.convert(net, switches=switches, divisor=divisor, example_input=example, reorder=method,
                        reorder_data=batches_)
        state = slimify.state.get_state(net)
        state.record.example_shape = list(example.shape)
        if cfg is not None:  # its Taylor scores came from images preprocessed so: the model keeps it
            from slimify.train.data_config import record_data_config

            record_data_config(net, cfg)
        state.record.random_init = checkpoint is None  # kept in the .slim: finetune warns about distillation
        result = state.record.reorder
        slimify.save(net, out, overwrite=force)
    else:
        result = slimify.reorder(net, method, batches_, example_input=example, batches=batches)
        _write_weights(net, out, force)
    groups = len(result.orders)
    click.echo(f"{type(net).__name__}: reordered {result.moved} of {groups} slimmable groups by {method}"
               f"{f' ({len(result.skipped)} kept their order)' if result.skipped else ''}; "
               f"full-width outputs unchanged (max relative change {result.max_change:.1e})")
    click.echo(f"saved {out}")
    if result.tied and result.moved == 0:
        click.echo(f"note: the {method} scores tie everywhere in {result.tied} of {groups} groups (e.g. a randomly "
                   "initialised BatchNorm has |gamma| = 1 for every channel): nothing moved", err=True)
    if checkpoint is None:  # after the work: an error must stay the only line on stderr
        click.echo("note: no --checkpoint, the reordered weights were randomly initialised", err=True)
