"""What does a frozen start group the synthetic training images by: camera, outfit or person?

    .venv/bin/python benchmarks/synth_neighbours.py                              # params.yaml's synth knobs
    .venv/bin/python benchmarks/synth_neighbours.py --set synth.camera_strength=1.0
    .venv/bin/python benchmarks/synth_neighbours.py --root generated/synthetic/LTCC_ReID

A calibration figure, method-agnostic (DESIGN §5): the unsupervised loop can only start from
the clusters the frozen ImageNet features give. If an image's nearest neighbours are mostly the
same camera rather than the same outfit, each outfit splits into per-camera groups smaller than
DBSCAN's ``min_samples`` and most of the training set begins as singletons. Printed per set:
the share of each training image's top-5 neighbours (cosine, frozen RGB ``f`` at the training
size) with the same camera / outfit / identity against the share a random pick would have, then
the default pseudo-labels on those features: clusters, singletons, adjusted Rand index against
outfits and identities, and how often two images in one cluster are one person.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: runs without PYTHONPATH or an install

from maskcl.cli import add_config_args, config_from_args
from maskcl.cluster.pseudo_labels import generate_pseudo_labels
from maskcl.config import Config
from maskcl.data import build_dataset
from maskcl.data.transforms import eval_transform
from maskcl.engine.extract import extract_features
from maskcl.models.network import TwoBranchNet


def neighbour_shares(feats: torch.Tensor, groups: dict[str, np.ndarray], k: int = 5) -> dict[str, tuple[float, float]]:
    """Per grouping: (share of top-k neighbours in the image's own group, share under a random pick)."""
    unit = torch.nn.functional.normalize(feats, dim=1)
    sim = unit @ unit.T
    sim.fill_diagonal_(-float("inf"))
    top = sim.topk(k, dim=1).indices.numpy()
    shares = {}
    for name, label in groups.items():
        _, counts = np.unique(label, return_counts=True)
        random_pick = float(((counts - 1) * counts).sum() / (len(label) * (len(label) - 1)))
        shares[name] = (float((label[top] == label[:, None]).mean()), random_pick)
    return shares


def same_person_share(labels: np.ndarray, pid: np.ndarray) -> float:
    """Of the pairs of images that share a (non-singleton) cluster, the share that are one person."""
    pairs = same = 0
    for cluster in np.unique(labels):
        members = pid[labels == cluster]
        if len(members) < 2:
            continue
        _, counts = np.unique(members, return_counts=True)
        pairs += len(members) * (len(members) - 1) // 2
        same += int((counts * (counts - 1) // 2).sum())
    return same / max(pairs, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(parser)
    parser.add_argument("--root", type=Path, default=None, help="an existing LTCC-layout set (default: generate one)")
    args = parser.parse_args()
    cfg: Config = config_from_args(args)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="synth-nbrs-") as tmp:
        root = args.root
        if root is None:
            from maskcl.data.synthetic import SynthSpec, generate_synthetic

            started = time.perf_counter()
            root = generate_synthetic(SynthSpec(**cfg.to_dict()["synth"]), Path(tmp), progress=False)
            print(f"# generated {cfg.to_dict()['synth']} in {time.perf_counter() - started:.1f} s")
        splits = build_dataset("synthetic", str(root))
        train = sorted(splits.train, key=lambda r: str(r.path))
        torch.manual_seed(0)
        net = TwoBranchNet(cfg.model.arch, cfg.model.pretrained, method="rgb", last_stride=cfg.model.last_stride).eval()
        with torch.no_grad():
            feats = extract_features(
                net, [r.path for r in train], eval_transform(cfg.train.height, cfg.train.width), torch.device("cpu"),
                progress=False,
            )
    pid = np.array([r.pid for r in train])
    groups = {"camera": np.array([r.camid for r in train]), "outfit": pid * 1000 + np.array([r.clothes_id for r in train]), "identity": pid}
    print(f"# {len(train)} training images, frozen {cfg.model.arch} ({cfg.model.pretrained}) at {cfg.train.height}×{cfg.train.width}")
    for name, (share, random_pick) in neighbour_shares(feats, groups).items():
        print(f"top-5 neighbours of the same {name:8s} {100 * share:5.1f} %   (random pick {100 * random_pick:4.1f} %)")
    pl = generate_pseudo_labels(
        feats, eps=cfg.eps, eps_gap=cfg.eps_gap, k1=cfg.k1, k2=cfg.k2, min_samples=cfg.min_samples,
        refine=cfg.cluster.refine, ratio_cluster=cfg.cluster.ratio_cluster,
    )
    labels = np.asarray(pl.labels)
    print(
        f"pseudo-labels (eps {cfg.eps}, k1 {cfg.k1}, k2 {cfg.k2}): {pl.n_clusters} clusters, {pl.n_unclustered} singletons "
        f"({100 * pl.n_unclustered / len(train):.0f} %); ARI outfit {adjusted_rand_score(groups['outfit'], labels):.3f}, "
        f"identity {adjusted_rand_score(pid, labels):.3f}; pairs in one cluster that are one person "
        f"{100 * same_person_share(labels, pid):.0f} %"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
