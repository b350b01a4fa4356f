"""The model commands of the ``slimify`` CLI: ``convert`` a model to a ``.slim`` file and
``inspect`` what a conversion finds; thin over ``slimify.create_model``, ``slimify.convert`` and ``slimify.save``."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from slimify.cli.app import command

__all__ = ["convert_command", "inspect_command", "parse_switches", "parse_width", "parse_widths", "width_options",
           "chosen_width", "chosen_widths", "parse_input_size", "check_output", "size_option", "RegistryChoice",
           "LiveHelpOption", "pretrained_options", "check_weights_options", "count_text", "check_input_size", "check_one_image"]

F = Callable[..., Any]

# importance score used when pretrained weights are given and --reorder is left at "auto": BatchNorm |gamma|
# beat keeping the prefix at widths 0.25 and 0.5 on both zero-shot benchmarks (benchmarks/RESULTS.md), L1 did not
PRETRAINED_REORDER = "bn"


class RegistryChoice(click.Choice):
    """A ``click.Choice`` over a registry's names, read when used: an entry registered after this
    module was imported is a choice too."""

    def __init__(self, names: Callable[[], tuple[str, ...]]) -> None:
        self._names = names
        super().__init__((), case_sensitive=True)

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        return self._names()

    @choices.setter
    def choices(self, value: Any) -> None:  # click.Choice.__init__ assigns it
        pass


class LiveHelpOption(click.Option):
    """A ``click.Option`` whose help text is written when shown (``help_fn``), so it lists what a
    registry holds then."""

    def __init__(self, *args: Any, help_fn: Callable[[], str], **kwargs: Any) -> None:
        self._help_fn = help_fn
        super().__init__(*args, **kwargs)

    @property
    def help(self) -> str:  # type: ignore[override]
        return self._help_fn()

    @help.setter
    def help(self, value: Any) -> None:  # click.Option.__init__ assigns it
        pass


def _reorder_choices() -> tuple[str, ...]:
    """auto, none and every importance score that needs no data (convert has none to give)."""
    from slimify import SCORES

    return ("auto", "none", *SCORES.names(lambda e: not e.options.get("needs_data")))


def reorder_option(f: F) -> F:
    return click.option("--reorder", type=RegistryChoice(_reorder_choices), default="auto", show_default=True,
                        help=f"Put each group's most important channels first before converting. auto: "
                             f"'{PRETRAINED_REORDER}' with --checkpoint or --pretrained (trained weights), none "
                             "without.")(f)


def pretrained_options(f: F) -> F:
    """``--pretrained [--pretrained-tag TAG]``: published weights through timm's/torchvision's loaders."""
    f = click.option("--pretrained-tag", metavar="TAG",
                     help="Which published weights: a timm tag (a1_in1k) or a torchvision name (IMAGENET1K_V2).")(f)
    return click.option("--pretrained", is_flag=True,
                        help="Start from the published weights (timm's / torchvision's own loaders and caches; "
                             "HF_HUB_OFFLINE=1 uses only cached copies).")(f)


def check_weights_options(checkpoint: str | None, pretrained: bool, tag: str | None) -> None:
    """--checkpoint and --pretrained exclude each other; a tag needs --pretrained."""
    if checkpoint and pretrained:
        raise click.UsageError("--checkpoint and --pretrained both give starting weights: pass one of them")
    if tag and not pretrained:
        raise click.UsageError("--pretrained-tag picks published weights: pass --pretrained with it")


def resolve_reorder(choice: str | None, checkpoint: str | bool | None) -> str | None:
    """The reorder method ``slimify.convert`` gets for a CLI choice (``checkpoint``: whether
    trained weights are loaded, from a file or published ones)."""
    if choice in (None, "auto"):
        return PRETRAINED_REORDER if checkpoint else None
    return None if choice == "none" else choice


def parse_switches(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> tuple[float, ...] | None:
    """``"0.25,0.5,1"`` → ``(0.25, 0.5, 1.0)``; each in (0, 1]."""
    if value is None:
        return None
    try:
        widths = tuple(sorted({float(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated widths like 0.25,0.5,0.75,1.0, got {value!r}") from None
    if not widths or any(not 0 < w <= 1 for w in widths):
        raise click.BadParameter(f"widths must lie in (0, 1], got {value!r}")
    return widths


def _width_or_name(item: str) -> float | str:
    """A number as a width (its range is the model's: checked with it), anything else as the name
    of a width configuration."""
    try:
        return float(item)
    except ValueError:
        return item


def parse_width(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> float | str | None:
    """``"0.5"`` → 0.5; a configuration's name (``search-flops-0.50x``) stays a name."""
    return None if value is None else _width_or_name(value.strip())


def parse_widths(ctx: click.Context | None, param: click.Parameter | None,
                 value: str | None) -> tuple[float | str, ...] | None:
    """``"0.5,1,search-flops-0.50x"`` → (0.5, 1.0, 'search-flops-0.50x'): widths and configuration names."""
    if value is None:
        return None
    items = tuple(dict.fromkeys(_width_or_name(v.strip()) for v in value.split(",") if v.strip()))
    if not items:
        raise click.BadParameter(f"expected comma-separated widths or configuration names like 0.5,1.0, got {value!r}")
    return items


def width_options(f: F, several: bool) -> F:
    """``--width W`` (``--widths W,…`` with ``several``) and ``--config NAME``: one spelling in every
    command that takes a width; a width option takes configuration names too."""
    f = click.option("--config", "config_name", multiple=several, metavar="NAME",
                     help="A named width configuration of the model (see `slimify inspect`; same as giving its "
                          f"name to --width{'s' if several else ''}){'; repeatable' if several else ''}.")(f)
    if several:
        return click.option("--widths", callback=parse_widths, metavar="W,…",
                            help="Widths (any in range) or configuration names  [default: every switch and named "
                                 "configuration]")(f)
    return click.option("--width", callback=parse_width, metavar="W",
                        help="A width between the narrowest switch and 1 (a switch or any other), or a "
                             "configuration's name.")(f)


def chosen_width(width: float | str | None, config_name: str | None, required: bool = False) -> float | str | None:
    """The one width ``--width``/``--config`` name (both: a usage error)."""
    if width is not None and config_name is not None:
        raise click.UsageError("give --width or --config, not both")
    chosen = width if width is not None else config_name
    if chosen is None and required:
        raise click.UsageError("give --width W (a width in range or a configuration's name) or --config NAME")
    return chosen


def chosen_widths(widths: tuple[float | str, ...] | None, config_names: tuple[str, ...]) -> tuple[Any, ...] | None:
    """``--widths`` and every ``--config`` together, in order (None: neither given)."""
    chosen = (*(widths or ()), *config_names)
    return tuple(dict.fromkeys(chosen)) or None


def parse_input_size(ctx: click.Context | None, param: click.Parameter | None,
                     value: str | None) -> tuple[int, int, int] | None:
    """``"224"`` → (3, 224, 224); ``"160x128"`` (H×W) → (3, 160, 128); ``"3x160x128"`` or
    ``"3,160,128"`` → (3, 160, 128)."""
    if value is None:
        return None
    parts = value.replace(",", "x").lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"expected a size like 224 or 3x224x224, got {value!r}") from None
    if len(sizes) == 1:
        sizes = [3, sizes[0], sizes[0]]
    elif len(sizes) == 2:  # H×W, three channels
        sizes = [3, *sizes]
    if len(sizes) != 3 or any(s < 1 or s > 4096 for s in sizes):
        raise click.BadParameter(f"expected a size like 224, 160x128 (HxW) or 3x224x224 (each 1…4096), got {value!r}")
    return sizes[0], sizes[1], sizes[2]


def size_option(f: F) -> F:
    return click.option("--input-size", callback=parse_input_size,
                        help="Input H=W (224), HxW (160x128) or CxHxW (3x160x128).  [default: the model's own]")(f)


def check_input_size(net: Any, input_size: tuple[int, int, int] | None, warn: bool = True) -> None:
    """The one check of --input-size against a loaded model (``slimify.check_input_size``): other
    channels, a size it cannot run at or below its downsampling is an error; under half the
    recorded size, a warning (on stdout: stderr holds only errors; ``warn=False`` where stdout is JSON)."""
    if input_size is None:
        return
    from slimify import check_input_size as check

    note = check(net, input_size)
    if note and warn:
        click.echo(f"warning: {note}")


def check_output(path: str, force: bool, suffixes: tuple[str, ...]) -> Path:
    """Fail before any work if ``path`` has the wrong suffix or exists without ``--force``."""
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise click.BadParameter(f"{path!r} must end with {' or '.join(suffixes)}", param_hint="-o/--output")
    if out.exists() and not force:
        raise click.UsageError(f"{path} already exists: pass --force to replace it")
    return out


def conversion_options(f: F) -> F:
    """Options that say how to build and convert a model given by name."""
    f = size_option(f)
    f = click.option("--num-classes", type=click.IntRange(min=0),
                     help="Classes of the classifier head; 0: none (timm models then return their features).")(f)
    f = click.option("--divisor", type=click.IntRange(min=1), default=None,
                     help="Channel counts at narrow switches are multiples of this  [default: 8, smaller for "
                          "layers too narrow for 8]")(f)
    f = click.option("--switches", callback=parse_switches, default="0.25,0.5,0.75,1.0", show_default=True,
                     help="Widths the model can run at.")(f)
    return f


def check_one_image(net: Any) -> None:
    """Fail with one line when ``net.forward`` needs more than the one image batch the CLI gives it
    (a model of several inputs is converted in Python, and its .slim then goes to every command)."""
    import inspect

    try:
        params = inspect.signature(net.forward).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let the conversion say what fails
        return
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    needed = [p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]
    if len(needed) > 1:
        name = type(net).__name__
        raise click.UsageError(f"{name}.forward takes {len(needed)} inputs ({', '.join(needed)}) and the command line "
                               "converts on one image batch: convert it in Python (slimify.convert with "
                               "example_input=(…) and example_kwargs={…}) and slimify.save it, then give the .slim file")


def _convert(model: str, checkpoint: str | None, switches: tuple[float, ...], divisor: int,
             num_classes: int | None, input_size: tuple[int, int, int] | None, reorder: str | None = None,
             pretrained: bool = False, tag: str | None = None) -> Any:
    import slimify

    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    net = slimify.create_model(model, checkpoint=checkpoint, pretrained=pretrained, tag=tag, **kwargs)
    check_one_image(net)
    slimify.convert(net, switches=switches, divisor=divisor, example_input=slimify.example_input(net, size=input_size),
                    reorder=reorder)  # the input's shape is recorded: later commands use it
    return net


def _params_line(net: Any) -> str:
    import slimify

    return "parameters per switch: " + ", ".join(f"{w:g}: {count_text(slimify.active_params(net, w))}"
                                                 for w in slimify.switches(net))


def count_text(n: int) -> str:
    """A parameter count people read: ``512`` below a thousand, ``13.5 K`` below a million, ``11.69 M``."""
    if n < 1000:
        return str(n)
    return f"{n / 1e3:.1f} K" if n < 999_500 else f"{n / 1e6:.2f} M"


@command("convert", epilog="""\b
Examples:
  slimify convert resnet50 -o rn50.slim
  slimify convert torchvision:mobilenet_v2 --switches 0.35,0.5,0.75,1.0 --input-size 160 -o mbv2.slim
  slimify convert resnet18 --checkpoint my_resnet18.pth --num-classes 10 -o rn18.slim --force
  slimify convert resnet50 --pretrained --pretrained-tag a1_in1k -o rn50.slim""")
@click.argument("model")
@conversion_options
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False),
              help="Plain weights to start from (.safetensors, or a torch file read with weights_only).")
@pretrained_options
@reorder_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write (.slim).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
def convert_command(model: str, switches: tuple[float, ...], divisor: int, num_classes: int | None,
                    input_size: tuple[int, int, int] | None, checkpoint: str | None, pretrained: bool,
                    pretrained_tag: str | None, reorder: str, output: str, force: bool) -> None:
    """Convert MODEL (a timm name, 'torchvision:NAME' or 'slimify:NAME') into a slimmable model
    and save it as a .slim file (config + safetensors weights, never pickled code)."""
    import slimify

    out = check_output(output, force, (".slim",))
    check_weights_options(checkpoint, pretrained, pretrained_tag)
    method = resolve_reorder(reorder, checkpoint or pretrained)
    net = _convert(model, checkpoint, switches, divisor, num_classes, input_size, reorder=method,
                   pretrained=pretrained, tag=pretrained_tag)
    rep = slimify.report(net)
    slimify.record_random_init(net, not (checkpoint or pretrained))  # kept in the .slim
    slimify.save(net, out, overwrite=force)
    click.echo(f"{rep.model}: {len(rep.groups)} channel groups, {len(rep.slimmable)} slimmable, {len(rep.fixed)} fixed "
               f"({rep.seconds:.1f} s)")
    click.echo(_params_line(net))
    if method:
        click.echo(f"channels reordered by {method} importance (most important first)")
    click.echo(f"saved {out}  (see the groups with: slimify inspect {out})")
    if max(slimify.switches(net)) < 1.0:
        click.echo(f"note: the switches do not include 1.0, so the original (full) width is no longer available: "
                   f"the widest switch is {max(slimify.switches(net)):g}", err=True)
    if checkpoint is None:
        click.echo("note: no --checkpoint, the model is randomly initialised", err=True)


@command("inspect", epilog="""\b
Examples:
  slimify inspect rn50.slim
  slimify inspect torchvision:resnet18 --switches 0.5,1.0 --max-rows 100
  slimify inspect convnext_atto --input-size 128 --json""")
@click.argument("model_or_file")
@conversion_options
@click.option("--max-rows", type=click.IntRange(min=1), default=40, show_default=True,
              help="Slimmable groups to list (largest first); fixed groups are always all listed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
def inspect_command(model_or_file: str, switches: tuple[float, ...], divisor: int, num_classes: int | None,
                    input_size: tuple[int, int, int] | None, max_rows: int, as_json: bool) -> None:
    """Show the channel groups of a .slim file or of a model name converted on the fly: channels
    per switch of each slimmable group, every fixed group with the reason it cannot slim, and the
    data config (crop, mean, std, interpolation) the model preprocesses with."""
    import slimify

    path = Path(model_or_file)
    loaded = path.suffix == ".slim" or path.is_file()
    net = slimify.load(path) if loaded else _convert(model_or_file, None, switches, divisor, num_classes, input_size)
    if loaded:
        check_input_size(net, input_size, warn=not as_json)
    rep = slimify.report(net)
    shape = slimify.example_shape(net)
    if as_json:
        recorded = slimify.recorded_data_config(net)
        click.echo(json.dumps({**rep.to_dict(), "data_config": recorded.given() if recorded else None}, indent=2))
        return
    click.echo(rep.table(max_rows=max_rows))
    named = slimify.configs_table(net)
    if named:
        click.echo("\n" + named)
    click.echo("")
    click.echo(_params_line(net))
    if len(shape) == 4:
        click.echo(slimify.describe_data_config(net, tuple(shape[1:])))
