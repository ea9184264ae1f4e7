"""What the classify sub-commands (train, evaluate, predict, sweep) share: options, candidate
layers, extraction with failures reported instead of raised, and the selection call."""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np

from classify.search import SEARCHES
from featurize.options import PRECISIONS, parse_weights
from featurize.progress import log_to_stderr

DEFAULT_BACKBONE = "efficientnet_lite0"
#: ``featurize train``'s candidate backbones: the three embedded EfficientNet-Lite networks, each
#: at the resolution its weights were trained at (224, 240, 260 px). Their features concatenated
#: are one more candidate; see benchmarks/README.md ("accuracy.py") for why.
DEFAULT_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
#: Stages (blocks between changes of feature-map shape) offered besides the penultimate layer.
DEFAULT_STAGES = 4


def csv_list(text: str) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]`` (argparse type)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    """Options that change how fast features are computed, never their values."""
    group = parser.add_argument_group("feature extraction")
    group.add_argument("--cache", metavar="FILE", default=None,
                       help="HDF5 feature cache: features are computed once and reused")
    group.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, mps")
    group.add_argument("--batch-size", type=int, default=32, metavar="N",
                       help="images per forward pass (default 32)")
    group.add_argument("--num-workers", type=int, default=None, metavar="N",
                       help="image-decoding worker processes (default: automatic)")


def add_selection_args(parser: argparse.ArgumentParser,
                       default_backbones=(DEFAULT_BACKBONE,)) -> None:
    """Candidates and cross-validation options (train and sweep)."""
    parser.add_argument("--backbone", type=csv_list, default=list(default_backbones),
                        metavar="B1,B2",
                        help=f"pretrained network(s) (default {','.join(default_backbones)}; see "
                             "`featurize backbones`). With several, each one's layers are "
                             "candidates, and so is the concatenation of every backbone's last "
                             "stage and penultimate layer")
    parser.add_argument("--weights", default="DEFAULT", type=parse_weights,
                        help="weights name or local checkpoint of a single --backbone (default: "
                        "the pretrained DEFAULT; 'none' for a random initialisation)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="forward-pass precision (default auto: mixed on CUDA, fp32 on CPU)")
    parser.add_argument("--layers", type=csv_list, default=None, metavar="L1,L2,...",
                        help="candidate layers (default: the ends of the last "
                             f"{DEFAULT_STAGES} stages and 'penultimate'; see `featurize "
                             "layers BACKBONE`)")
    parser.add_argument("--search", default="fast", choices=SEARCHES,
                        help="fast (default): screen every layer in closed form (ridge "
                        "leave-one-out), tune only the best --finalists; exhaustive: every "
                        "layer x head x C on every fold")
    parser.add_argument("--finalists", type=int, default=2, metavar="N",
                        help="fast search: layers tuned after the screening (default 2)")
    parser.add_argument("--heads", type=csv_list, default=None, metavar="H1,H2",
                        help="candidate heads (default: logreg for the fast search, "
                        "logreg,linear_svm,rbf_svm for the exhaustive one)")
    parser.add_argument("--scoring", default="balanced_accuracy",
                        choices=["balanced_accuracy", "accuracy", "f1_macro", "log_loss"],
                        help="score that decides (default balanced_accuracy)")
    parser.add_argument("--rule", default="best", choices=["best", "one_se"],
                        help="best (default): highest mean score; one_se: most regularized C "
                             "within one standard error of the best")
    parser.add_argument("--folds", type=int, default=5, metavar="K",
                        help="cross-validation folds (default 5, fewer for tiny classes)")
    parser.add_argument("--repeats", type=int, default=3, metavar="R",
                        help="repeats of the k-fold with new shuffles (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits (default 0)")
    parser.add_argument("--jobs", type=int, default=-1, metavar="N",
                        help="parallel cross-validation workers (default -1: all cores)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="print what each stage does (screening, tuning) on stderr")


def default_layers(infos, n_stages: int = DEFAULT_STAGES) -> list[str]:
    """Candidate layers: the ends of the last stages before the final feature map, and
    ``"penultimate"``.

    A stage is a run of consecutive layers (top-level modules and their direct children, in
    execution order) whose feature maps have the same shape; its last layer is its output.
    The final feature map is left out: pooled, it is the penultimate embedding.

    Parameters
    ----------
    infos : list of LayerInfo
        The backbone's layers (``name``, ``shape``), in execution order.
    n_stages : int
        How many stage outputs to offer.

    Returns
    -------
    list of str
    """
    maps = [i for i in infos if len(i.shape) == 3 and i.shape[1] * i.shape[2] > 1
            and i.name.count(".") <= 1]
    ends = [a.name for a, b in zip(maps, maps[1:]) if a.shape != b.shape]
    names = [i.name for i in infos]
    layers = ends[-n_stages:] if n_stages > 0 else []
    if "penultimate" in names:
        layers.append("penultimate")
    elif maps:
        layers.append(maps[-1].name)
    return layers or [names[-1]]


def backbone_layers(backbone: str, weights) -> list:
    """The backbone's layers (``LayerInfo``: name, shape), in execution order."""
    try:
        from featurize.layers import list_layers
    except ImportError:  # older featurize: trace a loaded network
        from featurize.extraction import Extractor

        return Extractor(backbone, weights, None, "avg", "cpu", "fp32").layer_infos
    return list_layers(backbone)


def extract(paths, *, backbone, weights, layers, pooling, precision, args):
    """Featurize ``paths``; unreadable images are returned as failures, not raised.

    Returns
    -------
    features : ndarray of shape (n_paths, n_features)
        NaN rows for the failures.
    failures : dict of int to str
        Row -> reason.
    widths : dict of str to int
        Width of each layer's block of columns.
    """
    from featurize.exceptions import FeatureExtractionWarning
    from featurize.extraction import Extractor

    extractor = Extractor(backbone, weights, layers, pooling, args.device, precision)
    # a bar on a terminal, else a log line every 10 s: never silent during a long extraction
    with warnings.catch_warnings(), log_to_stderr(["featurize.progress"]):
        warnings.simplefilter("ignore", FeatureExtractionWarning)  # reported by the caller
        result = extractor.extract(paths, batch_size=args.batch_size,
                                   num_workers=args.num_workers, cache=args.cache,
                                   on_error="nan", progress="auto")
    return result.features, result.failures, result.widths


def load_folder(root):
    """``load_image_folder`` with its skip summary sent to stderr instead of a warning."""
    from featurize.folder import load_image_folder

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        data = load_image_folder(root)
    for warning in caught:
        print(f"note: {warning.message}", file=sys.stderr)
    return data


def report_failures(paths, failures, file=sys.stderr, limit: int = 10) -> None:
    """One line per unreadable image (up to ``limit``)."""
    if not failures:
        return
    print(f"{len(failures)} of {len(paths)} images could not be read and are left out:",
          file=file)
    for row in sorted(failures)[:limit]:
        print(f"  {paths[row]}: {failures[row]}", file=file)
    if len(failures) > limit:
        print(f"  ... and {len(failures) - limit} more", file=file)


def candidate_features(data, args):
    """Extract every candidate feature set of the training images.

    The candidates are, for each backbone of ``args.backbone``, its layers (``args.layers``, or
    :func:`default_layers`) at each pooling, and, when that makes more than one layer, the
    concatenation of every backbone's last two candidate layers (the last stage and the
    penultimate layer, by default) at the first pooling. A feature set's key is
    ``(layer, pooling)``; with several backbones the layer is written ``"backbone:layer"``. The
    concatenation is ``"layer1+layer2"`` for one backbone and ``"concat:b1+b2+..."`` for several.

    Returns
    -------
    sets : dict of (str, str) to ndarray
        Rows of the images that could be read (by every backbone), at every candidate.
    y : ndarray of str
        Their class names.
    failures : dict of int to str
    layers : dict of str to list of str
        Each backbone's candidate layers.
    configs : dict of (str, str) to dict
        The featurizer configuration of each feature set: CNNFeaturizer parameters, or
        ``{"parts": [...]}`` for a concatenation (see :func:`classify.model.featurizer_parts`);
        ``precision`` is left to the caller.
    """
    backbones = list(dict.fromkeys(args.backbone))
    if len(backbones) > 1 and args.weights != "DEFAULT":
        raise ValueError(f"--weights {args.weights} names the weights of one network, and "
                         f"--backbone names {len(backbones)}: give a single --backbone with it.")
    poolings = getattr(args, "poolings", ["avg"])
    blocks, failures, layers_of = {}, {}, {}
    for backbone in backbones:
        layers = args.layers or default_layers(backbone_layers(backbone, args.weights))
        layers_of[backbone] = list(layers)
        for pooling in poolings:
            X, failed, widths = extract(data.paths, backbone=backbone, weights=args.weights,
                                        layers=layers, pooling=pooling,
                                        precision=args.precision, args=args)
            failures.update(failed)
            start = 0
            for layer in layers:
                block = X[:, start:start + widths[layer]]
                start += widths[layer]
                same = blocks.get((backbone, layer, poolings[0]))
                if pooling != poolings[0] and same is not None and np.array_equal(
                        block, same, equal_nan=True):
                    continue  # a vector layer (e.g. penultimate): every pooling is the identity
                blocks[(backbone, layer, pooling)] = block
    keep = np.setdiff1d(np.arange(len(data.paths)), list(failures))

    def name(backbone, layer):
        return f"{backbone}:{layer}" if len(backbones) > 1 else layer

    def config(members, pooling):
        parts = [{"backbone": b, "weights": args.weights, "pooling": pooling,
                  "layer": [layer for bb, layer in members if bb == b]}
                 for b in dict.fromkeys(b for b, _ in members)]
        for part in parts:
            if len(part["layer"]) == 1:
                part["layer"] = part["layer"][0]
        return parts[0] if len(parts) == 1 else {"parts": parts}

    sets, configs = {}, {}
    for (backbone, layer, pooling), X in blocks.items():
        key = (name(backbone, layer), pooling)
        sets[key], configs[key] = X[keep], config([(backbone, layer)], pooling)
    members = [(b, layer) for b in backbones for layer in layers_of[b][-2:]]
    if len(members) > 1:
        # one backbone: "blocks.15+penultimate"; several: "concat:lite0+lite1+lite2" (the
        # members are in the model's description)
        joined = ("+".join(layer for _, layer in members) if len(backbones) == 1
                  else "concat:" + "+".join(backbones))
        key = (joined, poolings[0])
        sets[key] = np.hstack([blocks[(b, layer, poolings[0])] for b, layer in members])[keep]
        configs[key] = config(members, poolings[0])
    y = np.asarray(data.target_names)[data.target]
    return sets, y[keep], failures, layers_of, configs


def run_selection(sets, y, args, *, probability: bool, nested: bool = False):
    """:func:`classify.select_model` with the command-line options."""
    from classify import select_model

    # progress lines (when stderr is not a terminal) always; every stage with --verbose
    names = ["classify", "featurize"] if getattr(args, "verbose", False) else [
        "featurize.progress"]
    with log_to_stderr(names):
        return select_model(sets, y, heads=args.heads, probability=probability,
                            scoring=args.scoring, n_splits=args.folds, n_repeats=args.repeats,
                            random_state=args.seed,
                            rule=args.rule, nested=nested, n_jobs=args.jobs,
                            search=args.search, n_finalists=args.finalists, progress="auto")


# -- the command ------------------------------------------------------------------------------
