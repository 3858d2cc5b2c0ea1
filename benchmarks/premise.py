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
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

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


def views(splits: DatasetSplits, cfg: Config):
    """(name, query paths, gallery paths, grey) of the two views of the test set."""
    yield "rgb", [r.path for r in splits.query], [r.path for r in splits.gallery], False
    yield "mask", [mask_of(r, splits, cfg) for r in splits.query], [mask_of(r, splits, cfg) for r in splits.gallery], True


def report_network(label: str, model: TwoBranchNet, splits: DatasetSplits, cfg: Config) -> None:
    model.eval()
    encoders: dict[str, tuple[Callable, bool]] = {"rgb f": (model, False)}
    if model.rgb.proj is not None:
        encoders["rgb g"] = (lambda x: model.rgb(x, project=True)[1], False)
    if model.mask is not None:
        encoders["mask f"] = (model.mask_features, True)
    for name, (encode, grey) in encoders.items():
        records = (splits.query, splits.gallery)
        if name.startswith("mask"):
            q_paths, g_paths = ([mask_of(r, splits, cfg) for r in rs] for rs in records)
        else:
            q_paths, g_paths = ([r.path for r in rs] for rs in records)
        q = branch_features(encode, q_paths, cfg, grey)
        g = branch_features(encode, g_paths, cfg, grey)
        print(f"  {label:<22} {name:<7} {score(splits, q, g)}")
    if model.rgb.proj is not None and model.mask is not None:
        gaps = []
        for split, records in (("train", splits.train), ("test", splits.gallery)):
            records = records[:400]
            g = branch_features(lambda x: model.rgb(x, project=True)[1], [r.path for r in records], cfg, False)
            m = branch_features(model.mask_features, [mask_of(r, splits, cfg) for r in records], cfg, True)
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
    for name, q_paths, g_paths, grey in views(splits, cfg):
        print(f"  {name + ' pixels':<22} {'':<7} {score(splits, pixels(q_paths, cfg, grey), pixels(g_paths, cfg, grey))}")

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
