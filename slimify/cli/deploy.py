"""The deployment commands of the ``slimify`` CLI: ``export`` one width, ``profile`` every switch,
``pick`` the widest switch within a budget; thin over ``slimify.write_width``,
``slimify.profile`` and ``slimify.pick``."""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from slimify import ALL_WIDTHS, FORMATS
from slimify.cli.app import command
from slimify.cli.model import (
    LiveHelpOption,
    check_input_size,
    check_output,
    chosen_width,
    chosen_widths,
    size_option,
    width_options,
)

__all__ = ["export_command", "profile_command", "pick_command", "write_export", "sized_call"]

F = Callable[..., Any]


def write_export(net: Any, width: Any, out: Path, force: bool, input_size: tuple[int, int, int] | None,
                 batch_size: int | None = None) -> str:
    """Export ``width`` (a width or a configuration's name) of ``net`` to ``out`` by its suffix
    (batch dynamic unless ``batch_size``); returns a one-line summary naming the dynamic dimensions."""
    import slimify

    return slimify.write_width(net, width, out, sized_call(net, input_size), overwrite=force, batch_size=batch_size)


def sized_call(net: Any, input_size: tuple[int, int, int] | None) -> Any:
    """The call ``net`` was converted on (all its inputs), its first tensor at ``--input-size``."""
    import slimify

    return slimify.example_call(net, batch=1, shape=(1, *input_size) if input_size else None)


def measure_options(f: F) -> F:
    """What and how to measure: widths, input size, batch, runs, threads, device, mode."""
    f = width_options(f, several=True)
    f = click.option("--mode", type=click.Choice(["export", "slim"]), default="export", show_default=True,
                     help="Measure each width as its exported plain model, or the slimmable model itself.")(f)
    f = click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1 …")(f)
    f = click.option("--threads", type=click.IntRange(min=1), help="torch intra-op threads  [default: torch's]")(f)
    f = click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True)(f)
    f = click.option("--runs", type=click.IntRange(min=1), default=20, show_default=True,
                     help="Timed runs per round; rounds repeat (up to 5) until the median settles.")(f)
    f = click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)(f)
    return size_option(f)


def _profile(file: str, input_size: tuple[int, int, int] | None, batch_size: int, runs: int, warmup: int,
             threads: int | None, device: str, mode: str, latency: bool = True,
             accuracy: str | None = None, widths: tuple[Any, ...] | None = None) -> tuple[Any, Any]:
    import slimify

    net = slimify.load(file)
    check_input_size(net, input_size)
    shape = (batch_size, *(input_size or slimify.example_shape(net)[1:]))
    result = slimify.profile(net, input_size=shape, runs=runs, warmup=warmup, threads=threads, device=device,
                             mode=mode, latency=latency, widths=widths)
    return net, slimify.attach_accuracy(result, net, accuracy)


@command("export", epilog="""\b
Examples:
  slimify export rn50.slim --width 0.5 -o rn50_w050.pt2
  slimify export rn50.slim --width 0.25 -o rn50_w025.onnx --input-size 224
  slimify export rn50.slim --width 0.75 -o rn50_w075.pt --force
  slimify export rn50.slim --width 0.5 -o rn50_w050_b8.pt2 --batch-size 8   # static batch
  slimify export rn50.slim --all-widths -o rn50_all.onnx   # one file, input 'width' picks the switch
  slimify export searched.slim --config search-flops-0.30x -o small.onnx""")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@functools.partial(width_options, several=False)
@click.option("--all-widths", is_flag=True, cls=LiveHelpOption,
              help_fn=lambda: "Every switch in one file, weights stored once: "
              + "; ".join(f"{e.name}: {e.help}" for e in ALL_WIDTHS) + ".")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), cls=LiveHelpOption,
              help_fn=lambda: "Output, by suffix: " + "; ".join(f"{e.name}: {e.help}" for e in FORMATS) + ".")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--batch-size", type=click.IntRange(min=1), cls=LiveHelpOption,
              help_fn=lambda: f"A static batch size for {'/'.join(FORMATS.names(lambda e: bool(e.options.get('batch_size'))))}."
              "  [default: dynamic batch]")
@size_option
def export_command(file: str, width: float | str | None, config_name: str | None, all_widths: bool, output: str,
                   force: bool, batch_size: int | None, input_size: tuple[int, int, int] | None) -> None:
    """Export one width of a .slim FILE as a plain, physically narrow model (no slimify needed to
    run it), or with --all-widths every width in one file; the example input for .pt2/.onnx is the
    conversion's input size unless --input-size."""
    import slimify

    if (width is not None) + (config_name is not None) + all_widths != 1:
        raise click.UsageError("give either --width W (a width in range or a configuration's name), --config NAME "
                               "or --all-widths")
    if all_widths and batch_size is not None:
        raise click.UsageError("--batch-size applies to one width; an --all-widths file has a dynamic batch")
    out = check_output(output, force, ALL_WIDTHS.names() if all_widths else FORMATS.names())
    net = slimify.load(file)
    check_input_size(net, input_size)
    if all_widths:
        click.echo(slimify.write_all_widths(net, out, sized_call(net, input_size), overwrite=force))
        return
    click.echo(write_export(net, chosen_width(width, config_name), out, force, input_size, batch_size))


@command("profile", epilog="""\b
Examples:
  slimify profile rn50.slim
  slimify profile rn50.slim --input-size 160 --batch-size 8 --threads 4 --json prof.json --plot prof.png
  slimify profile mbv2.slim --device cuda --runs 100 --csv prof.csv
  slimify profile searched.slim --widths 0.5,1.0 --config search-flops-0.30x --accuracy acc.json --plot p.png""")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@measure_options
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write the results as CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Also draw accuracy vs latency with eval results, else GFLOPs vs latency (.png).")
@click.option("--accuracy", "accuracy_path", type=click.Path(exists=True, dir_okay=False),
              help="Accuracy per width: 'slimify eval --json' output or {\"0.5\": 71.2, …}  "
                   "[default: the .slim's own]")
@click.option("--force", is_flag=True, help="Replace output files that exist.")
def profile_command(file: str, input_size: tuple[int, int, int] | None, batch_size: int, runs: int, warmup: int,
                    threads: int | None, device: str, mode: str, widths: tuple[Any, ...] | None,
                    config_name: tuple[str, ...], json_path: str | None, csv_path: str | None,
                    plot_path: str | None, accuracy_path: str | None, force: bool) -> None:
    """Measure parameters, MACs/FLOPs, latency (median, spread, p90) and peak memory of every switch of a
    .slim FILE on this machine, and print them as a table."""
    outputs = [check_output(p, force, s) for p, s in ((json_path, (".json",)), (csv_path, (".csv",)),
                                                      (plot_path, (".png",))) if p]
    _, result = _profile(file, input_size, batch_size, runs, warmup, threads, device, mode, accuracy=accuracy_path,
                         widths=chosen_widths(widths, config_name))
    click.echo(result.table())
    for out in outputs:
        writer = {".json": result.to_json, ".csv": result.to_csv, ".png": result.plot}[out.suffix.lower()]
        writer(out, overwrite=force)
        click.echo(f"wrote {out}")


@command("pick", epilog="""\b
Examples:
  slimify pick rn50.slim --latency-ms 5
  slimify pick rn50.slim --flops 1G --memory-mb 150 -o rn50_fit.onnx
  slimify pick mbv2.slim --params 2M --latency-ms 8 --threads 1 --batch-size 1""")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--latency-ms", type=click.FloatRange(min=0, min_open=True), help="Median latency budget (ms).")
@click.option("--flops", help="FLOPs budget per batch, e.g. 600M or 1.5G.")
@click.option("--params", help="Parameter budget, e.g. 5M.")
@click.option("--memory-mb", type=click.FloatRange(min=0, min_open=True), help="Peak memory budget (MB).")
@measure_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), cls=LiveHelpOption,
              help_fn=lambda: f"Also export the picked width ({'/'.join(FORMATS.names())}).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
def pick_command(file: str, latency_ms: float | None, flops: str | None, params: str | None, memory_mb: float | None,
                 input_size: tuple[int, int, int] | None, batch_size: int, runs: int, warmup: int,
                 threads: int | None, device: str, mode: str, widths: tuple[Any, ...] | None,
                 config_name: tuple[str, ...], output: str | None, force: bool) -> None:
    """Measure every switch of a .slim FILE on this machine and print the widest one within all
    the budgets given (and export it with -o)."""
    import slimify

    if latency_ms is None and flops is None and params is None and memory_mb is None:
        raise click.UsageError("give at least one budget: --latency-ms, --flops, --params or --memory-mb")
    try:
        budgets = dict(latency_ms=latency_ms, memory_mb=memory_mb,
                       flops=slimify.parse_amount(flops) if flops is not None else None,
                       params=slimify.parse_amount(params) if params is not None else None)
    except slimify.SlimifyError as e:
        raise click.BadParameter(str(e), param_hint="--flops/--params") from None
    out = check_output(output, force, FORMATS.names()) if output else None
    net, result = _profile(file, input_size, batch_size, runs, warmup, threads, device, mode,
                           latency=latency_ms is not None,  # FLOPs/params/memory budgets time nothing
                           widths=chosen_widths(widths, config_name))
    click.echo(result.table())
    best = slimify.pick(result, **budgets)
    timed = f"{best.latency_ms:.2f} ms median, " if best.latency_ms is not None else ""
    click.echo(f"\npicked {best.config or f'width {best.width:g}'}: {timed}{best.flops / 1e9:.3f} GFLOPs, "
               f"{best.params:,} params, {best.memory_mb:.1f} MB")
    if out is not None:
        click.echo(write_export(net, best.config or best.width, out, force, input_size))
