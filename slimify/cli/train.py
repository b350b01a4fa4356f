"""The training commands of the ``slimify`` CLI (finetune, calibrate, eval, demo), thin over
``slimify.train``; each registers with ``slimify.cli.app.command``."""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from slimify.cli.app import command, usage_errors
from slimify.cli.data_options import DATA_HELP, data_config_of, data_config_options
from slimify.cli.model import (
    check_input_size,
    check_weights_options,
    chosen_width,
    chosen_widths,
    parse_input_size,
    parse_switches,
    pretrained_options,
    reorder_option,
    resolve_reorder,
    width_options,
)

__all__ = ["finetune_command", "calibrate_command", "eval_command", "demo_command", "check_one_input"]

F = Callable[..., Any]


def model_options(f: F) -> F:
    """MODEL plus the options that say how to build and convert it from a name."""
    f = click.option("--num-classes", type=click.IntRange(min=1), help="Classes of the head (default: from DATA).")(f)
    f = click.option("--divisor", type=click.IntRange(min=1), default=None,
                     help="Channel counts are multiples of this  [default: 8, smaller for layers too narrow for 8]")(f)
    f = click.option("--switches", callback=parse_switches, help="Widths to convert to  [default: 0.25,0.5,0.75,1.0]")(f)
    f = click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False),
                     help="Plain pretrained weights (.safetensors / .pt / .pth) for a model name.")(f)
    f = reorder_option(f)
    f = click.option("--device", help="cpu, cuda, cuda:1 … (default: cuda if present).")(f)
    f = click.option("--input-size", callback=parse_input_size,
                     help="Image size H=W (e.g. 224) or CxHxW for the data pipeline (and for converting a model "
                          "name).  [default: the size the model was converted with]")(f)
    return click.argument("model")(f)


def workers_option(f: F) -> F:
    return click.option("--workers", type=click.IntRange(min=0),
                        help="DataLoader workers (default: one per CPU, up to 8; 0 for digits).")(f)


def _fresh_output(path: str, force: bool) -> None:
    """Fail before any work if ``path`` exists and ``--force`` was not given."""
    if Path(path).exists() and not force:
        raise click.UsageError(f"{path} already exists: pass --force to replace it")


def check_one_input(net: Any, command: str) -> None:
    """Fail before any work when ``net`` takes more than one image batch: a data command feeds it
    only the images of DATA."""
    import slimify

    with usage_errors():
        slimify.check_one_input(net, command)


def _check_classes(net: Any, data: str, command: str) -> None:
    """Fail before any work when the model takes other inputs than DATA's images, or DATA has more
    classes than the model has outputs."""
    import slimify

    with usage_errors():
        slimify.check_classes(net, data, command)


def _load(model: str, data: str, checkpoint: str | None, switches: tuple[float, ...] | None, divisor: int,
          num_classes: int | None, reorder: str | None, input_size: tuple[int, int, int] | None = None,
          pretrained: bool = False, pretrained_tag: str | None = None,
          model_kwargs: dict[str, Any] | None = None, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
    import slimify

    return slimify.model_for_data(model, data, checkpoint, switches, divisor, num_classes,
                              resolve_reorder(reorder, checkpoint or pretrained), input_size, pretrained,
                              pretrained_tag, model_kwargs, seed=seed)


def _build_kwargs(model: str, drop_path: float | None) -> dict[str, Any]:
    """Factory arguments a recipe implies for a timm model name: stochastic depth must exist in the
    built model (timm builds Identity where the rate is 0) before the recipe can set its rate."""
    import slimify

    source = model.rpartition(":")[0]
    return {"drop_path_rate": drop_path} if drop_path and slimify.is_model_name(model) and source in ("", "timm") else {}


def _warn_random_init(model: str, net: Any, narrow_loss: str) -> None:
    """Random weights (a model name with neither --pretrained nor --checkpoint, or a .slim converted
    so and never trained): say so before training, and that distillation needs a trained widest
    switch. stdout: stderr holds only errors."""
    import slimify

    if not slimify.holds_random_init(net):
        return
    if slimify.is_model_name(model):
        click.echo(f"warning: {model} starts from random weights (neither --pretrained nor --checkpoint): this "
                   "trains it from scratch, not a retrofit of trained weights")
    else:
        click.echo(f"warning: {model} holds random weights (converted without --checkpoint or --pretrained, never "
                   "trained): this trains it from scratch")
    if narrow_loss == "distill" and len(slimify.switches(net)) > 1:
        click.echo("warning: narrow_loss: distill teaches the narrow switches the widest one's predictions, which "
                   "mean nothing until it is trained; from scratch use --narrow-loss labels (or a recipe with "
                   "narrow_loss: labels)")


@command("finetune", epilog="""\b
Examples:
  slimify finetune torchvision:resnet18 --data digits --recipe demo -o runs/rn18
  slimify finetune resnet50 --checkpoint rn50.pth --reorder l1 --data ~/imagenet --recipe retrofit
  slimify finetune resnet50 --pretrained --pretrained-tag a1_in1k --data ~/imagenet -o runs/rn50
  torchrun --nproc_per_node 4 -m slimify finetune rn50.slim --data ~/imagenet --sync-bn --resume""")
@model_options
@pretrained_options
@click.option("--data", required=True, help=f"Training data: {DATA_HELP}.")
@click.option("--val", "val_data", help="Validation data (default: DATA's val/ sub-folder, or the val split of digits "
                                        "and IDX sets, held out from their training images).")
@click.option("--recipe", default="retrofit", show_default=True, help="Shipped recipe name or YAML file.")
@click.option("-o", "--out", default="runs/finetune", show_default=True, type=click.Path(file_okay=False),
              help="Run directory: checkpoint.pt, log.jsonl, final model.")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt if it exists.")
@click.option("--force", is_flag=True, help="Start over in OUT even if it holds a run (replacing its files).")
@click.option("--epochs", type=click.IntRange(min=1), help="Override the recipe's epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Override the recipe's batch size (per process).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Override the recipe's learning rate.")
@click.option("--workers", type=click.IntRange(min=0), help="Override the recipe's DataLoader workers.")
@click.option("--compile/--no-compile", "compile_", default=None,
              help="Override the recipe's compile: torch.compile the training model (inductor).")
@click.option("--narrow-loss", type=click.Choice(["labels", "distill"]),
              help="Override the recipe's narrow_loss: narrow switches learn from labels, or from the widest "
                   "switch's predictions (distill: for trained weights).")
@click.option("--sync-bn/--no-sync-bn", default=None,
              help="Override the recipe's sync_bn: each switch's BatchNorm statistics over all processes' batches.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: only on a terminal).")
@data_config_options
def finetune_command(model: str, data: str, val_data: str | None, recipe: str, out: str, resume: bool, force: bool,
                     epochs: int | None, batch_size: int | None, lr: float | None, workers: int | None,
                     compile_: bool | None, sync_bn: bool | None, narrow_loss: str | None, progress: bool | None,
                     checkpoint: str | None,
                     switches: tuple[float, ...] | None, divisor: int, num_classes: int | None, device: str | None,
                     reorder: str | None, input_size: tuple[int, int, int] | None, pretrained: bool,
                     pretrained_tag: str | None, crop_pct: float | None, mean: tuple[float, ...] | None,
                     std: tuple[float, ...] | None, interpolation: str | None) -> None:
    """Fine-tune all switches of MODEL jointly (a .slim file, a training checkpoint, or a model
    name converted on the fly: 'resnet18' is timm, 'torchvision:resnet18' is torchvision). The
    data config it trains image folders with (crop, mean, std, interpolation) is recorded in the
    run's model; later commands use it."""
    import slimify

    overrides = {k: v for k, v in dict(epochs=epochs, batch_size=batch_size, lr=lr, workers=workers,
                                        compile=compile_, sync_bn=sync_bn, narrow_loss=narrow_loss).items()
                 if v is not None}
    r = slimify.load_recipe(recipe, **overrides)  # fail on a bad recipe before building anything
    check_weights_options(checkpoint, pretrained, pretrained_tag)
    if not (resume or force) and any((Path(out) / n).exists() for n in ("checkpoint.pt", "model.slim", "model.pt")):
        raise click.UsageError(f"{out} already holds a run: pass --resume to continue it or --force to start over")
    with slimify.process_group() as dist:
        net, spec = _load(model, data, checkpoint, switches, divisor, num_classes, reorder, input_size, pretrained,
                          pretrained_tag, _build_kwargs(model, r.drop_path), seed=r.seed)
        cfg = data_config_of(net, input_size, crop_pct, mean, std, interpolation)
        check_input_size(net, input_size)
        _check_classes(net, data, "finetune")
        if dist.is_main and not (resume and (Path(out) / "checkpoint.pt").is_file()):  # resumed: trained weights
            _warn_random_init(model, net, r.narrow_loss)
        train = slimify.resolve_data(data, net, train=True, input_size=input_size, augment=slimify.augment_args(r),
                                     data_config=cfg)
        has_val = val_data is not None or slimify.has_validation(data)
        val = slimify.resolve_data(val_data or data, net, train=False, split="val", input_size=input_size,
                                   data_config=cfg) if has_val else None
        recorded = slimify.record_trained_data_config(net, train, input_size, cfg)
        if recorded is not None:  # an image folder, preprocessed by the data config: the model's from now on
            spec["data_config"] = recorded
        result = slimify.finetune(net, train, r, val_data=val, out_dir=out, resume=resume, device=device,
                                  progress=progress, model_spec=spec, echo=click.echo)
        for trained in (net, result.ema_model):
            if trained is not None:
                slimify.record_random_init(trained, False)  # trained now: its .slim says so
        if dist.is_main:
            _report_run(net, result, spec, Path(out), val_data or data, calibrated=bool(r.calibrate_batches))


def _report_run(net: Any, result: Any, spec: dict[str, Any], out: Path, val_data: str, calibrated: bool) -> None:
    """Print the accuracy a run reached and save its models (the main process only)."""
    import slimify

    if result.eval is not None:
        click.echo(f"{'after BN calibration' if calibrated else 'after fine-tuning'}:\n{result.eval.table()}")
        slimify.record_evaluation(net, result.eval.top1(), val_data)  # kept in the .slim: profile plots accuracy
    click.echo(f"saved {slimify.save_model(net, spec, out / 'model.slim')} (checkpoint: {result.checkpoint})")
    if result.ema_model is not None:
        if result.eval_ema is not None:
            click.echo(f"EMA weights:\n{result.eval_ema.table()}")
        click.echo(f"saved {slimify.save_model(result.ema_model, spec, out / 'model_ema.slim')} (EMA weights)")


@command("calibrate", epilog="""\b
Examples:
  slimify calibrate runs/rn18/model.slim --data ~/imagenet --batches 100 -o rn18-calibrated.slim
  slimify calibrate m.slim --data ~/imagenet --width 0.6 -o m-060.slim
  slimify calibrate searched.slim --data digits --config search-flops-0.30x -o searched.slim --force""")
@model_options
@click.option("--data", required=True, help=f"Training images: {DATA_HELP}.")
@functools.partial(width_options, several=False)
@click.option("--batches", type=click.IntRange(min=1), default=100, show_default=True, help="Batches per switch.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to save (.pt or .slim).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--val", "val_data", help="Validation data for the accuracy before and after (default: DATA's val/ "
                                        "sub-folder, or the val split of digits and IDX sets; none: no accuracy "
                                        "printed).")
@workers_option
@data_config_options
def calibrate_command(model: str, data: str, width: float | str | None, config_name: str | None, batches: int,
                      batch_size: int, output: str, force: bool, val_data: str | None, workers: int | None,
                      checkpoint: str | None, switches: tuple[float, ...] | None, divisor: int,
                      num_classes: int | None, device: str | None, reorder: str | None,
                      input_size: tuple[int, int, int] | None, crop_pct: float | None,
                      mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
                      interpolation: str | None) -> None:
    """Re-estimate each switch's BatchNorm statistics of MODEL on training images and save it; with
    --width (a width or a configuration's name) or --config, only that one's, which it then owns
    (saved in the .slim file).
    With validation data, print the accuracy before and after."""
    import slimify

    chosen = chosen_width(width, config_name)
    if chosen is not None and Path(output).suffix != ".slim":
        raise click.UsageError("a configuration's statistics are stored in .slim files: give -o NAME.slim")
    _fresh_output(output, force)
    net, spec = _load(model, data, checkpoint, switches, divisor, num_classes, reorder, input_size)
    cfg = data_config_of(net, input_size, crop_pct, mean, std, interpolation)
    check_input_size(net, input_size)
    check_one_input(net, "calibrate")
    dev = slimify.resolve_device(device)
    net.to(dev)
    has_val = val_data is not None or slimify.has_validation(data)
    val = slimify.resolve_data(val_data or data, net, train=False, split="val", input_size=input_size,
                               data_config=cfg) if has_val else None
    n = slimify.default_workers(workers, data)
    widths = None if chosen is None else [chosen]

    def accuracy(when: str) -> None:
        if val is not None:
            click.echo(f"{when} BN calibration:\n"
                       f"{slimify.evaluate(net, val, widths=widths, batch_size=batch_size, device=dev, workers=n).table()}")

    accuracy("before")
    train_data = slimify.resolve_data(data, net, train=True, input_size=input_size, data_config=cfg)
    slimify.calibrate_bn(net, train_data, batches=batches, batch_size=batch_size, workers=n, device=dev,
                         widths=widths)
    accuracy("after")
    if cfg is not None:  # calibrated with it: the saved model keeps it
        slimify.record_data_config(net, cfg)
    what = "per switch" if chosen is None else f"for {chosen!r}" if isinstance(chosen, str) else f"for width {chosen:g}"
    click.echo(f"calibrated {batches} batches {what}; saved {slimify.save_model(net, spec, output, overwrite=force)}")


@command("eval", epilog="""\b
Examples:
  slimify eval runs/rn18/model.slim --data digits
  slimify eval rn50.slim --data ~/imagenet/val --widths 0.5,1.0 --markdown
  slimify eval searched.slim --data digits --widths 0.5,search-flops-0.30x --json acc.json""")
@model_options
@click.option("--data", required=True, help=f"Test data: {DATA_HELP}; evaluated on its test split (IDX sets: the "
                                            "published test set; folders: test/, else val/; digits: its val split).")
@functools.partial(width_options, several=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--markdown", is_flag=True, help="Print a markdown table.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the metrics as JSON.")
@click.option("--force", is_flag=True, help="Replace the --json file if it exists.")
@workers_option
@data_config_options
def eval_command(model: str, data: str, widths: tuple[Any, ...] | None, config_name: tuple[str, ...],
                 batch_size: int, markdown: bool,
                 json_path: str | None, force: bool, workers: int | None, checkpoint: str | None,
                 switches: tuple[float, ...] | None,
                 divisor: int, num_classes: int | None, device: str | None, reorder: str | None,
                 input_size: tuple[int, int, int] | None, crop_pct: float | None, mean: tuple[float, ...] | None,
                 std: tuple[float, ...] | None, interpolation: str | None) -> None:
    """Top-1 / top-5 / loss of every switch and named configuration of MODEL on DATA (or of
    --widths / --config: widths in range and configuration names)."""
    import slimify

    if json_path:
        _fresh_output(json_path, force)
    net, _ = _load(model, data, checkpoint, switches, divisor, num_classes, reorder, input_size)
    cfg = data_config_of(net, input_size, crop_pct, mean, std, interpolation)
    check_input_size(net, input_size)
    _check_classes(net, data, "eval")
    dev = slimify.resolve_device(device)
    named = [n for n, v in slimify.configs(net).items() if not (isinstance(v, float) and v in slimify.switches(net))]
    chosen = chosen_widths(widths, config_name) or (*slimify.switches(net), *named)
    test = slimify.resolve_data(data, net, train=False, split="test", input_size=input_size, data_config=cfg)
    result = slimify.evaluate(net.to(dev), test, widths=chosen, batch_size=batch_size, device=dev,
                              workers=slimify.default_workers(workers, data))
    click.echo(result.table(markdown=markdown))
    if json_path:
        result.to_json(json_path, overwrite=force)


@command("demo", epilog="""\b
Examples:
  slimify demo                      # under a minute on a laptop CPU (36 s measured on 2 cores)
  slimify demo --epochs 2 --out /tmp/slimify-demo""")
@click.option("-o", "--out", default="slimify-demo", show_default=True, type=click.Path(file_okay=False),
              help="Where the pretrained cache, the run (checkpoint, log) and results.json go.")
@click.option("--epochs", type=click.IntRange(min=1), default=6, show_default=True,
              help="Slimmable fine-tuning epochs.")
@click.option("--pretrain-epochs", type=click.IntRange(min=1), default=8, show_default=True,
              help="Epochs of the plain model (cached in OUT; reused when unchanged).")
@click.option("--switches", callback=parse_switches, help="Widths  [default: 0.25,0.5,0.75,1.0]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: only on a terminal).")
def demo_command(out: str, epochs: int, pretrain_epochs: int, switches: tuple[float, ...] | None, seed: int,
                 progress: bool | None) -> None:
    """Retrofit a small CNN on the embedded digits data: pretrain (or load), convert, fine-tune all
    switches, calibrate BN and print the accuracy of every width."""
    import slimify

    if switches is not None and 1.0 not in switches:
        raise click.BadParameter("the switches must include 1.0 (the pretrained width)", param_hint="--switches")
    result = slimify.run_demo(out, epochs=epochs, pretrain_epochs=pretrain_epochs, seed=seed, switches=switches,
                      progress=progress, echo=click.echo)
    click.echo(result.table())
    files = sorted(p.relative_to(result.out_dir).as_posix() for p in Path(result.out_dir).rglob("*") if p.is_file())
    click.echo(f"wrote in {result.out_dir}/: {', '.join(files)}; {sum(result.seconds.values()):.0f} s")
