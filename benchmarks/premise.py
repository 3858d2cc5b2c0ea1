"""Where does the clothes-invariant signal live? Figures for the MaskCL premise on a dataset.

    .venv/bin/python benchmarks/premise.py                                  # params.yaml's dataset
    .venv/bin/python benchmarks/premise.py --checkpoint maskcl=generated/train/last.pt \\
        --checkpoint rgb=/tmp/rgb/last.pt

MaskCL's premise is that the silhouette carries identity when clothes change, and that training
the RGB branch against the mask view moves that signal into the RGB features used at test time.
A run can miss the premise at either step, so this script scores each one separately on the
clothes-changing protocol (``cc``, the paper's) and the same-clothes one (``sc``):

1. chance: random features (mean of 5 draws): the floor every other figure is read against;
2. raw pixels: the test images and their silhouettes, flattened at the training size
   (does the data itself carry the signal, in which view?);
3. a randomly initialised network (``model.pretrained`` as configured): RGB ``f`` and mask ``f``;
4. each ``--checkpoint``: RGB ``f`` (the paper's test feature), RGB projection ``g`` (the feature
   the cross-view terms train toward the mask view), mask ``f``; and how well ``g`` predicts the
   mask feature of the same image, ``cos(g, f_mask)``, on training vs test identities (a gap
   means the RGB branch learned the mask view by memorising training outfits);
5. pseudo-label quality on each checkpoint's RGB memory (the features the engine clusters):
   clusters, singletons, adjusted Rand index against outfits and identities.

Every figure is computed here from the data and the models; nothing is cached or assumed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: runs without PYTHONPATH or an install

from maskcl.cli import add_config_args, config_from_args
from maskcl.cluster.pseudo_labels import generate_pseudo_labels
from maskcl.config import Config
from maskcl.data import build_dataset
from maskcl.data.dataset import load_rgb
from maskcl.data.records import DatasetSplits, Record, mask_path_for
from maskcl.data.transforms import eval_transform
from maskcl.engine.checkpoint import load_checkpoint, load_model_state
from maskcl.engine.extract import extract_features
from maskcl.eval.protocols import evaluate_features
from maskcl.models.network import TwoBranchNet, build_network

PROTOCOLS = ("cc", "sc")
CPU = torch.device("cpu")


def score(splits: DatasetSplits, query: torch.Tensor, gallery: torch.Tensor) -> str:
    metrics = evaluate_features(query, gallery, splits, protocols=[p for p in PROTOCOLS if p in splits.protocols])
    return "  ".join(f"{p} mAP {m['mAP']:5.2f} R1 {m['rank1']:5.1f}" for p, m in metrics.items())


def mask_of(record: Record, splits: DatasetSplits, cfg: Config) -> Path:
    return mask_path_for(record.path, splits.root, Path(cfg.dataset.mask_root))


def pixels(paths: list[Path], cfg: Config, grey: bool) -> torch.Tensor:
    transform = eval_transform(cfg.train.height, cfg.train.width, grey=grey)
    return torch.stack([transform(load_rgb(p)).flatten() for p in paths])


def branch_features(encode: Callable, paths: list[Path], cfg: Config, grey: bool) -> torch.Tensor:
    transform = eval_transform(cfg.train.height, cfg.train.width, grey=grey)
    return extract_features(encode, paths, transform, CPU, batch_size=cfg.eval.batch_size, desc="premise")


def paths_of(records: list[Record], view: str, splits: DatasetSplits, cfg: Config) -> list[Path]:
    """The image (``view="rgb"``) or silhouette (``"mask"``) file of each record."""
    return [mask_of(r, splits, cfg) if view == "mask" else r.path for r in records]


def report_network(label: str, model: TwoBranchNet, splits: DatasetSplits, cfg: Config) -> None:
    model.eval()
    # name → (encoder, view); the mask view is read in grey, as the engine reads masks
    encoders: dict[str, tuple[Callable, str]] = {"rgb f": (model, "rgb")}
    if model.rgb.proj is not None:
        encoders["rgb g"] = (lambda x: model.rgb(x, project=True)[1], "rgb")
    if model.mask is not None:
        encoders["mask f"] = (model.mask_features, "mask")
    gallery: dict[str, torch.Tensor] = {}
    for name, (encode, view) in encoders.items():
        q = branch_features(encode, paths_of(splits.query, view, splits, cfg), cfg, view == "mask")
        gallery[name] = branch_features(encode, paths_of(splits.gallery, view, splits, cfg), cfg, view == "mask")
        print(f"  {label:<22} {name:<7} {score(splits, q, gallery[name])}")
    if "rgb g" in encoders and "mask f" in encoders:
        train = splits.train[:400]
        pairs = {
            "train": tuple(
                branch_features(encoders[n][0], paths_of(train, encoders[n][1], splits, cfg), cfg, encoders[n][1] == "mask")
                for n in ("rgb g", "mask f")
            ),
            "test": (gallery["rgb g"][:400], gallery["mask f"][:400]),  # already extracted above
        }
        gaps = []
        for split, (g, m) in pairs.items():
            g, m = torch.nn.functional.normalize(g, dim=1), torch.nn.functional.normalize(m, dim=1)
            gaps.append(f"{split} {(g * m).sum(1).mean().item():.3f} (other images {(g @ m.T).mean().item():.3f})")
        print(f"  {label:<22} cos(g, f_mask) of the same image: {'; '.join(gaps)}")


def report_clusters(label: str, feats: torch.Tensor, records: list[Record], cfg: Config) -> None:
    pl = generate_pseudo_labels(
        feats, eps=cfg.eps, eps_gap=cfg.eps_gap, k1=cfg.k1, k2=cfg.k2, min_samples=cfg.min_samples,
        refine=cfg.cluster.refine, ratio_cluster=cfg.cluster.ratio_cluster,
    )
    labels = np.asarray(pl.labels)
    outfit = adjusted_rand_score([r.clothes_id for r in records], labels)
    identity = adjusted_rand_score([r.pid for r in records], labels)
    print(
        f"  {label:<22} {pl.n_clusters} clusters, {pl.n_unclustered} singletons of {len(records)}; "
        f"ARI vs outfits {outfit:.3f}, vs identities {identity:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--checkpoint", action="append", default=[], metavar="LABEL=PATH", help="a trained run's last.pt")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    splits = build_dataset(cfg.dataset.name, cfg.dataset.root)
    records = sorted(splits.train, key=lambda r: str(r.path))  # the engine's memory order
    print(
        f"# premise figures — {time.strftime('%Y-%m-%d %H:%M')} — {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, load {os.getloadavg()[0]:.1f}"
    )
    print(f"# dataset {cfg.dataset.name} at {cfg.dataset.root}: {len(splits.train)} train, "
          f"{len(splits.query)} query, {len(splits.gallery)} gallery; images {cfg.train.height}×{cfg.train.width}")

    print("1. chance (random features, mean of 5 draws)")
    generator = torch.Generator().manual_seed(0)
    chance = []
    for _ in range(5):
        q = torch.randn(len(splits.query), 64, generator=generator)
        g = torch.randn(len(splits.gallery), 64, generator=generator)
        chance.append(evaluate_features(q, g, splits, protocols=["cc"])["cc"]["mAP"])
    print(f"  {'random':<22} cc mAP {np.mean(chance):5.2f} ± {np.std(chance):.2f}")

    print("2. raw pixels at the training size")
    for view in ("rgb", "mask"):
        q = pixels(paths_of(splits.query, view, splits, cfg), cfg, view == "mask")
        g = pixels(paths_of(splits.gallery, view, splits, cfg), cfg, view == "mask")
        print(f"  {view + ' pixels':<22} {'':<7} {score(splits, q, g)}")

    print(f"3. randomly initialised network (seed {cfg.seed}, pretrained: {cfg.model.pretrained})")
    torch.manual_seed(cfg.seed)
    init = build_network(cfg.replace(method="maskcl"))
    report_network("init", init, splits, cfg)
    init_feats = branch_features(init, [r.path for r in records], cfg, False)
    report_clusters("init: clustering", init_feats, records, cfg)

    print("4./5. trained checkpoints")
    for item in args.checkpoint:
        label, _, path = item.partition("=")
        state = load_checkpoint(Path(path))
        run_cfg = Config.from_dict(state["config"], source=path).replace(**{"model.pretrained": "none"})
        model = build_network(run_cfg)
        load_model_state(model, state["model"], path)
        report_network(label, model, splits, cfg)
        report_clusters(f"{label}: clustering", state["memories"]["rgb"]["feats"].float(), records, cfg)


if __name__ == "__main__":
    main()
