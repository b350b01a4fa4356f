"""``slimify search``: per-group widths under a FLOPs, parameter or latency budget (thin over
``slimify.search``); the found configuration is saved, named, in a new ``.slim`` file."""
from __future__ import annotations

import click

from slimify.cli.app import command
from slimify.cli.data_options import DATA_HELP, data_config_of, data_config_options
from slimify.cli.model import check_input_size, check_output
from slimify.cli.train import check_one_input

__all__ = ["search_command"]


@command("search", epilog="""\b
Examples:
  slimify search m.slim --data digits --flops 0.3x -o searched.slim
  slimify search rn50.slim --data ~/imagenet --flops 1.5G --batches 8 -o rn50-1.5g.slim
  slimify search mbv2.slim --data ~/imagenet --latency-ms 5 --device cuda -o mbv2-5ms.slim
  slimify search mbv3.slim --data ~/imagenet --flops 0.35x --eval-size 128 --cost-size 224 --batches 2 -o s.slim
  slimify export searched.slim --config search-flops-0.30x -o small.onnx""")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--data", required=True, help=f"Held-out data, its val split: {DATA_HELP}.")
@click.option("--flops", help="FLOPs budget per image: absolute (300M, 1.5G) or of full width (0.3x).")
@click.option("--params", help="Parameter budget: absolute (2M) or of full width (0.5x).")
@click.option("--latency-ms", help="Latency budget per image on --device, in ms (or 0.5x of full width).")
@click.option("--device", default="cpu", show_default=True, help="Where latency is measured and the search runs.")
@click.option("--steps", type=click.IntRange(min=1), default=1, show_default=True,
              help="Grid steps taken off a group per move near the budget (more: faster, coarser).")
@click.option("--fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Far from the budget, take at least this share of a group's channels per move (AutoSlim's "
                   "0.1); moves turn to --steps once one would cross the budget. 0: --steps only.")
@click.option("--batches", type=click.IntRange(min=1), default=4, show_default=True,
              help="Held-out batches every candidate is scored on (fewer: faster, noisier).")
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--eval-size", type=click.IntRange(min=8), metavar="N",
              help="Score candidates on held-out images of NxN (smaller: faster)  [default: the converted size]")
@click.option("--cost-size", type=click.IntRange(min=8), metavar="N",
              help="Count FLOPs / latency on one NxN input  [default: the input the model was converted with]")
@click.option("--name", help="Name of the found configuration  [default: search-KIND-BUDGET]")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .slim file to write.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Accuracy vs cost plot (.png)  [default: OUTPUT with -search.png]")
@click.option("--force", is_flag=True, help="Replace OUTPUT (and the plot) if they exist.")
@data_config_options
def search_command(file: str, data: str, flops: str | None, params: str | None, latency_ms: str | None, device: str,
                   steps: int, fraction: float, batches: int, batch_size: int, eval_size: int | None,
                   cost_size: int | None, name: str | None, output: str, plot_path: str | None, force: bool,
                   crop_pct: float | None, mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
                   interpolation: str | None) -> None:
    """Find per-group channel counts of a trained .slim FILE that meet one budget with the least
    held-out accuracy lost (AutoSlim-style greedy slimming), and save the model with the found
    configuration named (usable by export --config, profile, pick, calibrate --config, eval)."""
    import slimify

    given = [(k, v) for k, v in (("flops", flops), ("params", params), ("latency", latency_ms)) if v is not None]
    if len(given) != 1:
        raise click.UsageError("give exactly one budget: --flops, --params or --latency-ms")
    budget = slimify.parse_budget(*given[0])
    out = check_output(output, force, (".slim",))
    plot = check_output(plot_path or str(out.with_name(out.stem + "-search.png")), force, (".png",))
    net = slimify.load(file)
    check_one_input(net, "search")
    shape = slimify.example_shape(net)
    if (eval_size or cost_size) and len(shape) != 4:
        raise slimify.SlimifyError(f"--eval-size and --cost-size are for image models; this one takes inputs of "
                                   f"shape {list(shape)}")
    size = None if eval_size is None else (shape[1], eval_size, eval_size)
    for n in (eval_size, cost_size):
        check_input_size(net, None if n is None else (shape[1], n, n))
    cfg = data_config_of(net, size, crop_pct, mean, std, interpolation)
    held = slimify.data_batches(data, net, batches, batch_size, size, cfg)
    cost_input = None if cost_size is None else slimify.example_input(net, size=(shape[1], cost_size, cost_size))
    result = slimify.search(net, held, budget, steps=steps, fraction=fraction, device=device, name=name,
                            cost_input=cost_input, progress=lambda line: click.echo(line, err=True))
    click.echo(result.table())
    if cfg is not None:  # scored with it: the saved model keeps it
        slimify.record_data_config(net, cfg)
    result.plot(plot)
    click.echo(f"wrote {slimify.save(net, out, overwrite=force)} (configuration {result.name!r}) and {plot}")
