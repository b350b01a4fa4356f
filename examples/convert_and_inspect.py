"""Convert a timm (or torchvision) model into a slimmable network, see which channel groups slim
and why others cannot, run every width, and save/reload it as a .slim file.

    python examples/convert_and_inspect.py --model resnet50
    python examples/convert_and_inspect.py --model torchvision:mobilenet_v2 --input-size 160 --out mbv2.slim
"""
from __future__ import annotations

import argparse

import torch

import slimify
from slimify.deploy.extract import active_params
from slimify.store.sources import create


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", help="timm name, torchvision:NAME or slimify:NAME")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--switches", default="0.25,0.5,0.75,1.0")
    parser.add_argument("--out", help="save the slimmable model here (.slim)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)

    # 1. build the plain model (random weights here; pass checkpoint="my.pth" for yours)
    model = create(args.model).eval()
    x = torch.randn(2, 3, args.input_size, args.input_size)
    with torch.no_grad():
        reference = model(x)

    # 2. convert in place: same object, same class, the original keys in its state_dict
    switches = tuple(float(s) for s in args.switches.split(","))
    slimify.convert(model, switches=switches, example_input=x[:1])
    print(slimify.report(model).table())

    # 3. run every width; the widest reproduces the original model
    print()
    for w in slimify.switches(model):
        with torch.no_grad(), slimify.width(model, w):
            y = model(x)
        print(f"width {w:<5g} params {active_params(model, w) / 1e6:6.2f} M  output {tuple(y.shape)}")
    with torch.no_grad():
        assert torch.allclose(model(x), reference, atol=1e-5 * float(reference.abs().max()))

    # 4. save as data (config + safetensors) and load it back
    if args.out:
        slimify.save(model, args.out, overwrite=args.force)
        again = slimify.load(args.out)
        with torch.no_grad(), slimify.width(model, switches[0]), slimify.width(again, switches[0]):
            same = torch.equal(model(x), again(x))
        print(f"saved {args.out}; reloaded, identical at width {switches[0]:g}: {same}")


if __name__ == "__main__":
    main()
