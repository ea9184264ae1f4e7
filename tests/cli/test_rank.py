"""``featurize rank``: train's candidates screened before any training, in one extraction
pass, leaving the cache warm for ``train``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from classify.ranking import layer_flops, rank_folder
from classify.screening import screen_feature_sets
from classify.training import candidate_features
from featurize.images.datasets import sample_images
from pipelines.cli import main

BACKBONE = "efficientnet_lite0"  # real embedded weights


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("rank")
    for class_dir in sorted(p for p in sample_images().train.iterdir() if p.is_dir()):
        (root / class_dir.name).mkdir()
        for f in sorted(class_dir.glob("*.jpg"))[:8]:
            shutil.copy(f, root / class_dir.name / f.name)
    return root


def test_rank_screens_trains_candidates_and_leaves_the_cache_warm(small_tree, tmp_path,
                                                                  capsys):
    cache = tmp_path / "feats.h5"
    assert main(["rank", str(small_tree), "--backbone", BACKBONE, "--cache", str(cache),
                 "--precision", "fp32", "--format", "json", "--workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    table = result["candidates"]
    # train's candidates: the default layers and the concatenation of the last two
    candidates = candidate_features(small_tree, backbones=[BACKBONE], precision="fp32",
                                    cache=str(cache), num_workers=0)
    assert sorted(row["feature_set"] for row in table) == sorted(
        f"{layer}/{pooling}" for layer, pooling in candidates.sets)
    # served from the cache rank filled: the same rows (a later `train` computes nothing)
    assert candidates.failures == {} and result["n_images"] == 32
    keys = list(candidates.sets)
    codes = np.unique(candidates.y, return_inverse=True)[1]
    screen = screen_feature_sets([candidates.sets[k] for k in keys], codes)
    expected = {f"{k[0]}/{k[1]}": s for k, s in zip(keys, screen["loo_score"])}
    assert {row["feature_set"]: row["score"] for row in table} == pytest.approx(expected)
    assert [row["score"] for row in table] == sorted((row["score"] for row in table),
                                                     reverse=True)
    widths = {row["feature_set"]: row["width"] for row in table}
    assert widths["penultimate/avg"] == 1280
    assert widths["blocks.15+penultimate/avg"] == 1280 + widths["blocks.15/avg"]
    cost = {row["feature_set"]: row["gflops"] for row in table}
    assert 0 < cost["blocks.7/avg"] < cost["blocks.14/avg"] < cost["penultimate/avg"]
    assert cost["blocks.15+penultimate/avg"] == cost["penultimate/avg"]


def test_the_cost_of_a_layer_is_the_flops_of_the_network_up_to_it():
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from featurize import load_backbone

    flops = layer_flops(BACKBONE, ["blocks.7", "penultimate"])
    model = load_backbone(BACKBONE).model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, 224, 224))
    total = counter.get_total_flops()
    head = 2 * 1280 * 1000  # the classifier: the only work after the penultimate layer
    assert flops["penultimate"] == total - head
    assert 0 < flops["blocks.7"] < flops["penultimate"]
    assert 0.7e9 < flops["penultimate"] < 0.9e9  # EfficientNet-Lite0: 0.4 G multiply-adds


def test_rank_refuses_a_score_it_cannot_compute(small_tree, capsys):
    with pytest.raises(SystemExit):
        main(["rank", str(small_tree), "--scoring", "log_loss"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(ValueError, match="balanced_accuracy"):
        rank_folder(small_tree, scoring="log_loss")
