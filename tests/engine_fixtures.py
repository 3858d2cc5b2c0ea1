"""Helpers for the engine tests: a tiny LTCC-named image tree with masks, the small-run config,
and plain stand-ins for the cluster/eval collaborators (used only where those modules are not
importable yet, or where a test needs full control)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from maskcl.config import Config
from maskcl.data.records import DatasetSplits, Record, mask_path_for

# The proposed small run (CPU, synthetic dataset): resnet18, 128×64 images, few epochs/iters.
SMALL_RUN = {
    "model": {"arch": "resnet18", "pretrained": "imagenet"},
    "train": {
        "epochs": 6, "iters": 20, "batch_size": 32, "num_instances": 4, "height": 128, "width": 64,
        "step_size": 4, "allknn": 3, "eval_step": 2, "workers": 2, "device": "cpu",
    },
}

# The test-sized run: seconds, not minutes.
TINY_RUN = {
    "seed": 1,
    "eps": 0.6,
    "k1": 6,
    "k2": 2,
    "min_samples": 2,
    "model": {"arch": "resnet18", "pretrained": "none"},
    "train": {
        "epochs": 2, "iters": 3, "batch_size": 8, "num_instances": 4, "height": 32, "width": 16,
        "allknn": 2, "eval_step": 1, "workers": 0, "device": "cpu",
    },
    "eval": {"batch_size": 32},
}


def tiny_config(root: Path, mask_root: Path, **overrides) -> Config:
    data = {**TINY_RUN, "dataset": {"name": "synthetic", "root": str(root), "mask_root": str(mask_root)}}
    cfg = Config.from_dict(data)
    return cfg.replace(**overrides) if overrides else cfg


def make_tiny_tree(tmp: Path, ids: int = 4, outfits: int = 2, cams: int = 2, per: int = 1, test_ids: int = 2,
                   height: int = 32, width: int = 16) -> tuple[DatasetSplits, Path]:
    """LTCC-named PNGs (``PPP_O_cCC_FFFFFF.png``) with a body of id-specific height and an
    outfit-specific colour, and a 0/255 silhouette per train image under ``tmp/masks``."""
    root, mask_root = tmp / "LTCC_ReID", tmp / "masks"
    rng = np.random.default_rng(0)
    splits: dict[str, list[Record]] = {"train": [], "query": [], "test": []}
    clothes = 0
    for pid in range(ids + test_ids):
        split_train = pid < ids
        body_h = int(height * (0.5 + 0.4 * pid / (ids + test_ids)))
        for outfit in range(outfits):
            colour = rng.integers(0, 256, 3)
            for cam in range(cams):
                for frame in range(per):
                    image = np.full((height, width, 3), 40 + 50 * cam, np.uint8)
                    top = height - body_h
                    image[top:, width // 4: 3 * width // 4] = colour
                    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
                    split = "train" if split_train else ("query" if cam == 0 and frame == 0 else "test")
                    path = root / split / f"{pid:03d}_{outfit}_c{cam + 1:02d}_{frame:06d}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(image).save(path)
                    splits[split].append(Record(path, pid, clothes, cam))
                    if split == "train":
                        mask = np.zeros((height, width), np.uint8)
                        mask[top:, width // 4: 3 * width // 4] = 255
                        mpath = mask_path_for(path, root, mask_root)
                        mpath.parent.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(mask, "L").save(mpath)
            clothes += 1
    data = DatasetSplits("synthetic", root, splits["train"], splits["query"], splits["test"], ("cc",))
    return data, mask_root


# ---------------------------------------------------------------- stand-ins
def standin_pseudo_labels(feats: torch.Tensor, cfg) -> SimpleNamespace:
    """DBSCAN on cosine distance, un-clustered samples as singletons (contract's label layout)."""
    from sklearn.cluster import DBSCAN

    f = torch.nn.functional.normalize(feats.float().cpu(), dim=1)
    dist = (1 - f @ f.t()).clamp_min(0).numpy()
    raw = DBSCAN(eps=0.1, min_samples=2, metric="precomputed").fit_predict(dist)
    n_clusters = int(raw.max()) + 1
    labels = raw.copy()
    nxt = n_clusters
    for i in np.flatnonzero(raw < 0):
        labels[i] = nxt
        nxt += 1
    return SimpleNamespace(labels=labels.astype(np.int64), n_clusters=n_clusters,
                           n_unclustered=int((raw < 0).sum()), n_refined_out=0, timings={})


def standin_neighbours(memory: torch.Tensor, labels: torch.Tensor, k: int):
    c = int(labels.max()) + 1
    sums = torch.zeros(c, memory.shape[1]).index_add_(0, labels.cpu(), memory.float().cpu())
    cent = torch.nn.functional.normalize(sums, dim=1)
    sim = cent @ cent.t()
    sim.fill_diagonal_(-2.0)
    vals, idx = sim.topk(k, dim=1)
    return idx, vals


def standin_score(query, gallery, splits: DatasetSplits, cfg) -> dict:
    """Plain mAP / rank-1 with the CC rule, one loop per query."""
    q, g = torch.as_tensor(query).float(), torch.as_tensor(gallery).float()
    dist = torch.cdist(q, g)
    aps, r1 = [], []
    for i, rq in enumerate(splits.query):
        keep = [j for j, rg in enumerate(splits.gallery)
                if not (rg.pid == rq.pid and (rg.camid == rq.camid or rg.clothes_id == rq.clothes_id))]
        good = [rg.pid == rq.pid for rg in (splits.gallery[j] for j in keep)]
        if not any(good):
            continue
        order = torch.argsort(dist[i, keep]).tolist()
        hits = np.array([good[j] for j in order], float)
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float((precision * hits).sum() / hits.sum()))
        r1.append(float(hits[0]))
    return {"cc": {"mAP": 100 * float(np.mean(aps)), "rank1": 100 * float(np.mean(r1)),
                   "n_queries": len(aps), "n_skipped": len(splits.query) - len(aps)}}


def patch_collaborators(monkeypatch, splits: DatasetSplits, real: bool = True) -> dict[str, bool]:
    """Point the trainer at ``splits``; use the real cluster/eval modules when importable."""
    from maskcl.engine import trainer

    monkeypatch.setattr(trainer, "load_splits", lambda cfg: splits)
    used = {}
    for name, module, standin in (
        ("make_pseudo_labels", "maskcl.cluster.pseudo_labels", standin_pseudo_labels),
        ("make_neighbours", "maskcl.cluster.neighbours", standin_neighbours),
        ("score", "maskcl.eval", standin_score),
    ):
        ok = False
        if real:
            try:
                mod = __import__(module, fromlist=["x"])
                ok = hasattr(mod, {"make_pseudo_labels": "generate_pseudo_labels",
                                   "make_neighbours": "cluster_neighbours",
                                   "score": "evaluate_features"}[name])
            except ImportError:
                ok = False
        if not ok:
            monkeypatch.setattr(trainer, name, standin)
        used[name] = ok
    return used


def make_ltcc_tree(tmp: Path) -> tuple[DatasetSplits, Path]:
    """The tiny tree plus the LTCC ``info/`` lists, so the real ``synthetic`` loader reads it
    (a ``maskcl train`` subprocess, where nothing can be monkeypatched)."""
    splits, mask_root = make_tiny_tree(tmp)
    info = splits.root / "info"
    info.mkdir(exist_ok=True)
    train_ids = sorted({r.path.name[:3] for r in splits.train})
    test_ids = sorted({r.path.name[:3] for r in splits.query + splits.gallery})
    (info / "cloth-change_id_train.txt").write_text("".join(f"{int(i)}\n" for i in train_ids))
    (info / "cloth-unchange_id_train.txt").write_text("")
    (info / "cloth-change_id_test.txt").write_text("".join(f"{int(i)}\n" for i in test_ids))
    (info / "cloth-unchange_id_test.txt").write_text("")
    return splits, mask_root


def truncate_half(path: Path) -> None:
    """Cut a file to its first half: what an interrupted copy or write leaves behind."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
