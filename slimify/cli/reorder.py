"""The ``slimify reorder`` command: put the most important channels of pretrained weights first,
writing plain reordered weights (or, for a ``.slim`` output, the converted model)."""
from __future__ import annotations

from pathlib import Path

import click

from slimify import SCORES, WEIGHT_SUFFIXES
from slimify.cli.app import command
from slimify.cli.data_options import DATA_HELP, data_config_of, data_config_options
from slimify.cli.model import (
    LiveHelpOption,
    RegistryChoice,
    check_one_image,
    check_output,
    conversion_options,
)

__all__ = ["reorder_command"]


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
    import slimify

    if Path(model).suffix == ".slim":
        raise slimify.SlimifyError(f"{model} is already slimmable: reorder the plain model (name + --checkpoint) "
                                   "before converting")
    if SCORES.get(method).options.get("needs_data") and data is None:
        raise click.UsageError(f"--method {method} needs --data ({DATA_HELP})")
    out = check_output(output, force, WEIGHT_SUFFIXES + (".slim",))
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    net = slimify.create_model(model, checkpoint=checkpoint, **kwargs)
    check_one_image(net)
    example = slimify.example_input(net, size=input_size)
    size = tuple(example.shape[1:])
    cfg = data_config_of(net, size, crop_pct, mean, std, interpolation)
    batches_ = slimify.data_batches(data, net, batches, batch_size, size, cfg, shuffled=True) \
        if data is not None else None
    if out.suffix == ".slim":
        slimify.convert(net, switches=switches, divisor=divisor, example_input=example, reorder=method,
                        reorder_data=batches_)
        if cfg is not None:  # its Taylor scores came from images preprocessed so: the model keeps it
            slimify.record_data_config(net, cfg)
        slimify.record_random_init(net, checkpoint is None)  # kept in the .slim: finetune warns about distillation
        result = slimify.reordering(net)
        slimify.save(net, out, overwrite=force)
    else:
        result = slimify.reorder(net, method, batches_, example_input=example, batches=batches)
        slimify.write_weights(net, out, overwrite=force)
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
