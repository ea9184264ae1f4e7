"""``featurize download BACKBONE [--weights NAME]``: fetch pretrained weights on request."""

from __future__ import annotations

NAME = "download"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        NAME, help="download the pretrained weights of a torchvision or timm backbone",
        description="Fetch the weights of BACKBONE (a torchvision name, or timm:<model>) into "
                    "the standard cache (TORCH_HOME, HF_HOME), with a progress bar. featurize "
                    "never downloads otherwise. Without a network it fails within about 30 s.")
    parser.add_argument("backbone", metavar="BACKBONE")
    parser.add_argument("--weights", default="DEFAULT",
                        help="weights name (torchvision) or pretrained tag (timm); default DEFAULT")
    parser.set_defaults(func=run)


def run(args) -> int:
    from featurize.networks.downloads import download_weights

    print(download_weights(args.backbone, args.weights))
    return 0
