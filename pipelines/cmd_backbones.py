"""``featurize backbones``: list the backbone names."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "backbones", help="list the backbones featurize can load",
        description="List backbone names: the embedded EfficientNet-Lite models (weights ship"
                    " with featurize) and torchvision's classifiers (weights from the torch hub"
                    " cache or a local file).")
    parser.set_defaults(func=run)


def run(args) -> int:
    from featurize.backbones import list_backbones

    for name in list_backbones():
        print(name)
    return 0
