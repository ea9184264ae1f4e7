"""``featurize layers BACKBONE``: the layer names with their output shapes."""

from __future__ import annotations

import json

from pipelines.arguments import add_format_arg


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "layers", help="list a backbone's layers and output shapes",
        description="List the layers of BACKBONE that can be read (pass them as --layer or"
                    " CNNFeaturizer(layer=...)), with their output shape for one image of"
                    " --image-size pixels, in execution order. 'penultimate' is the embedding"
                    " the network's own classifier uses (the default).")
    parser.add_argument("backbone", metavar="BACKBONE", help="e.g. efficientnet_lite0, resnet18")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input side (default: the backbone's own input size)")
    parser.add_argument("--depth", type=int, default=2,
                        help="show module paths with at most this many dotted parts"
                             " (default 2; 0 shows all)")
    add_format_arg(parser, help_text="output format (default text: a table; json)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from featurize.networks.layers import list_layers

    layers = list_layers(args.backbone, image_size=args.image_size)
    if args.depth > 0:
        layers = [i for i in layers if i.name.count(".") < args.depth]
    if args.format == "json":
        print(json.dumps([{"name": i.name, "shape": list(i.shape), "kind": i.kind}
                          for i in layers], indent=1))
        return 0
    width = max(len(i.name) for i in layers)
    print(f"{'layer':<{width}}  {'output shape':<18}  module")
    for info in layers:
        shape = " x ".join(str(s) for s in info.shape)
        print(f"{info.name:<{width}}  {shape:<18}  {info.kind}")
    return 0
