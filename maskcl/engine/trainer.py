"""The MaskCL training engine (and its RGB-only baseline): ``fit`` and ``evaluate_checkpoint``.

One epoch, in the authors' order (paper.md §2.3–2.6, OpenUnReID's runner order):

1. pseudo-labels from the RGB memory (Jaccard + DBSCAN + refinement, singletons kept), or with
   ``cluster.oracle`` the true identities / outfits (a diagnostic, never the method);
2. cluster-neighbour tables from the fusion memory (the RGB memory when there is none), with the
   curriculum ``K_e = floor(allknn · e / epochs)`` (e 0-based; no neighbour loss while ``K_e = 0``);
3. ``iters`` Adam steps on P×K batches; after every step each memory slot of the batch moves
   toward its new feature;
4. StepLR step;
5. evaluation every ``eval_step`` epochs and at the last epoch (RGB ``f`` only);
6. ``out_dir/history.json`` and, every ``checkpoint_every`` epochs and after the last,
   ``out_dir/last.pt`` (atomic), once per epoch with the scores. An evaluation that raises saves
   the trained epoch first (a resumed run scores it first).

``out_dir`` is held by a lock (:mod:`maskcl.engine.lock`): a second training into it refuses at
once; temp files a killed save left there are removed at start, with a log line.

Loss per step (all weights 1): ``L_rgb = focal + nbr`` on ``f_rgb``; ``L_mask = focal + nbr +
cross-view instance + cross-view prototype`` on ``f_mask`` / ``g_rgb``; ``L_fusion = focal`` on
``h``. ``method: rgb`` keeps only ``L_rgb``. The reported result is the LAST epoch; the best epoch
on the test set is returned only as the separately labelled ``best_on_test``.

A run in ``out_dir`` resumes from ``last.pt`` with every RNG restored, so on CPU an interrupted
and resumed run equals an uninterrupted one (epochs after the newest checkpoint are replayed).
``train.image_cache_mb`` keeps decoded images in memory (:mod:`maskcl.data.image_cache`): the
same pixels, decoded once.

Multi-process (``torchrun``, :mod:`maskcl.engine.distributed`): ``train.batch_size`` is the
global batch and each of the ``world`` processes trains on ``batch_size / world`` contiguous rows
of it, so the run equals a single-process run with the same global batch up to float rounding:
batch norm uses global statistics (:mod:`maskcl.models.sync_batchnorm`), DDP averages the
gradients, the neighbour loss takes its weights and draws over the global batch
(:func:`~maskcl.losses.sharded_neighbour_loss`), every process applies the whole global batch to
its memories, and every sample's augmentation has its own seed. Pseudo-labels, neighbour tables,
evaluation, checkpoints and logs are rank 0's; the feature pass that initialises the memories is
split over the processes. Any process count may resume a checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from maskcl.atomic import remove_stale_temps
from maskcl.config import Config, config_changes, flatten_dict
from maskcl.data.dataset import Loader, TrainPairs, load_rgb
from maskcl.data.image_cache import DecodedImages
from maskcl.data.records import DatasetSplits
from maskcl.data.sampler import GlobalBatchRows, PKCameraSampler, rows_per_rank
from maskcl.data.transforms import PairedTrainTransform, eval_transform, train_transform
from maskcl.engine import distributed
from maskcl.engine.branches import ParallelBranches
from maskcl.engine.checkpoint import (
    capture_rng,
    load_checkpoint,
    load_model_state,
    restore_rng,
    save_checkpoint,
)
from maskcl.engine.extract import extract_features
from maskcl.engine.lock import prepare_out_dir, train_lock
from maskcl.engine.logger import NullLogger, RunLogger
from maskcl.errors import CheckpointError, ClusteringError, ConfigError, MaskclError, MaskError, TrainingError
from maskcl.losses import (
    authors_neighbour_weights,
    cross_view_instance_loss,
    cross_view_prototype_loss,
    focal_prototype_loss,
    neighbour_loss,
    prototype_probs,
    sharded_neighbour_loss,
)
from maskcl.memory import InstanceMemory
from maskcl.models.network import TrainOutputs, TwoBranchNet, build_network

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"
HISTORY = "history.json"
# Wall-clock figures of each epoch, kept beside the checkpoint but out of it and out of
# history.json: a re-run with the same seed must write the same run folder (DVC hashes it), and
# timings never repeat. The folder's .dvcignore entry keeps this file out of the hash too.
TIMINGS = "timings.json"
TIMING_KEYS = ("cluster_time_s", "eval_time_s", "epoch_time_s")
# keys a resumed run may change (how long / where / how fast it runs, not what it learns)
RESUMABLE_CHANGES = (
    "train.epochs", "train.eval_step", "train.workers", "train.device", "train.amp",
    "train.image_cache_mb", "train.checkpoint_every", "train.parallel_branches",
    "dataset.root", "dataset.mask_root", "eval.",
)


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    ``metrics`` is the LAST epoch's evaluation ``{protocol: {mAP, rank1, …}}`` — the figure to
    report. ``best_on_test`` (``{"epoch", "protocol", "metrics"}``) is the epoch with the best
    test mAP on the default protocol: a test-set selection (what the authors report), kept only
    to be shown under its own label.
    """

    metrics: dict[str, dict[str, float]]
    epochs: int
    history: list[dict[str, Any]]
    checkpoint: Path
    best_on_test: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- collaborators (other modules)
def load_splits(cfg: Config) -> DatasetSplits:
    from maskcl.data import build_dataset

    return build_dataset(cfg.dataset.name, cfg.dataset.root)


def check_images(splits: DatasetSplits, names=("train", "query", "gallery")) -> None:
    from maskcl.data.integrity import check_split_images

    # headers and end markers only (~30 µs a file): an unreadable gallery image fails here, not at
    # the first evaluation an epoch later
    check_split_images(splits, names)


def check_masks(records, dataset_root, mask_root) -> list[Path]:
    from maskcl.masks.generate import check_masks as check

    # check_size reads only the PNG headers (~25 µs a file, under 1% of the memory-init pass that
    # decodes every image and mask), so a wrong-size mask fails here, before any model is built
    return check(records, dataset_root, mask_root, check_size=True)


def make_pseudo_labels(feats: torch.Tensor, cfg: Config):
    from maskcl.cluster.pseudo_labels import generate_pseudo_labels

    return generate_pseudo_labels(
        feats, eps=cfg.eps, eps_gap=cfg.eps_gap, k1=cfg.k1, k2=cfg.k2, min_samples=cfg.min_samples,
        refine=cfg.cluster.refine, ratio_cluster=cfg.cluster.ratio_cluster, knn=cfg.cluster.knn,
        backend=cfg.cluster.backend, nprobe=cfg.cluster.nprobe, nlist=cfg.cluster.nlist or None,
    )


def oracle_labels(records, kind: str):
    from maskcl.cluster.oracle import oracle_labels as labels_of

    return labels_of(records, kind)


def make_neighbours(memory: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    from maskcl.cluster.neighbours import cluster_neighbours

    return cluster_neighbours(memory, labels, k)


def score(query_feats: torch.Tensor, gallery_feats: torch.Tensor, splits: DatasetSplits, cfg: Config) -> dict:
    from maskcl.eval import evaluate_features

    # seed fixed at 0 (not cfg.seed): every run is scored on the same PRCC single-shot galleries
    return evaluate_features(query_feats, gallery_feats, splits, protocols=None, seed=0, trials=cfg.eval.prcc_trials)


# ---------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def curriculum_k(allknn: int, epoch: int, epochs: int) -> int:
    """``floor(allknn · epoch / epochs)`` with a 0-based ``epoch`` (the authors' ``knn_epoch``)."""
    return (allknn * epoch) // epochs


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)  # no partial temp file; `path` keeps its previous content
        raise TrainingError(
            f"cannot write '{path}': {exc.strerror or exc} (errno {exc.errno}); the checkpoint beside it "
            "holds the same history — free space, then re-run to resume"
        ) from exc


def _check_resumable(saved: dict, cfg: Config, path: Path) -> None:
    # a key the saved config lacks was added to maskcl after the checkpoint was written; keys are
    # introduced with the behaviour the code had before as their default, so the writing run ran
    # with that default (a checkpoint from before cluster.nprobe existed searched 8 lists)
    before = flatten_dict(Config.from_dict({}).to_dict()) | flatten_dict(saved)
    changed = config_changes(before, cfg.to_dict(), RESUMABLE_CHANGES)
    if changed:
        raise CheckpointError(
            f"'{path}' was written by a run with another configuration ({'; '.join(changed[:5])}); "
            "resume with the same settings, or train into another --out folder"
        )


def _train_records(splits: DatasetSplits):
    return sorted(splits.train, key=lambda r: str(r.path))  # memory slot i = i-th record, stable


class _Meter:
    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}


def _without_timings(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in entry.items() if k not in TIMING_KEYS} for entry in history]


def maskcl_losses(
    out: TrainOutputs,
    memories: dict[str, InstanceMemory],
    targets: torch.Tensor,
    nbrs: tuple[torch.Tensor, torch.Tensor] | None,
    t,
    batch_targets: torch.Tensor | None = None,
    parts: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The per-step loss terms (paper.md §2.5), one entry per memory present.

    ``targets [B]`` are the batch's pseudo-labels; ``nbrs`` the per-cluster neighbour tables
    ``(idx [C,K], sim [C,K])`` or ``None``; ``t`` the :class:`~maskcl.config.TrainConfig`.
    ``loss_rgb = focal + nbr`` (f_rgb); ``loss_mask = focal + nbr + cross-view instance +
    cross-view prototype`` (f_mask, g_rgb); ``loss_fusion = focal`` (h).

    In a multi-process run ``targets [b]`` are this process's rows and ``batch_targets [B]`` the
    whole global batch's, in global order: the neighbour term then takes its weights and draws
    over the global batch (:func:`~maskcl.losses.sharded_neighbour_loss`); every other term is a
    batch mean, whose process average is the global mean.

    ``parts``, when given, receives the two cross-view terms on their own (detached): they are
    summed into ``loss_mask`` with its focal term, and whether the RGB projection moves toward the
    silhouette view (``−cos``) is what the premise turns on, so a run records them per epoch.
    """

    def proto_and_nbr(feats: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        probs = prototype_probs(feats, protos, t.temp)
        loss = focal_prototype_loss(probs, targets, t.focal_gamma)
        if nbrs is not None:
            idx, sim = nbrs
            if batch_targets is None:
                loss = loss + neighbour_loss(probs, idx[targets], sim[targets])
            else:
                loss = loss + sharded_neighbour_loss(probs, idx[targets], sim[batch_targets])
        return loss

    m_rgb = memories["rgb"]
    losses = {"loss_rgb": proto_and_nbr(out.f_rgb, m_rgb.prototypes())}
    if out.f_mask is not None and "mask" in memories:
        protos = memories["mask"].prototypes()
        loss_mask = proto_and_nbr(out.f_mask, protos)
        if t.cross_view and out.g_rgb is not None:
            instance = cross_view_instance_loss(out.g_rgb, out.f_mask)
            prototype = cross_view_prototype_loss(out.g_rgb, protos, targets)
            loss_mask = loss_mask + instance + prototype
            if parts is not None:
                parts["xview_instance"], parts["xview_prototype"] = instance.detach(), prototype.detach()
        losses["loss_mask"] = loss_mask
    if out.h is not None and "fusion" in memories:
        probs = prototype_probs(out.h, memories["fusion"].prototypes(), t.temp)
        losses["loss_fusion"] = focal_prototype_loss(probs, targets, t.focal_gamma)
    return losses


# ---------------------------------------------------------------- the engine
class Engine:
    """Holds one run's state; :func:`fit` is the public entry point."""

    def __init__(self, cfg: Config, out_dir: Path, logger: RunLogger, device: torch.device | None = None):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.logger = logger
        self.device = device if device is not None else resolve_device(cfg.train.device)
        self.world, self.rank = distributed.world(), distributed.rank()
        self.main = self.rank == 0
        self.train_net: torch.nn.Module | None = None  # the DDP wrapper when world > 1
        self.amp = cfg.train.amp and self.device.type == "cuda"
        self.two = cfg.method == "maskcl"
        self.generator = torch.Generator()
        self.ckpt_path = self.out_dir / CHECKPOINT

    # -- setup
    def setup(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        # a batch that does not split into whole P×K groups per process fails before any work
        self.local_batch = rows_per_rank(t.batch_size, t.num_instances, self.world)
        seed_everything(cfg.seed)
        self.generator.manual_seed(cfg.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.splits = load_splits(cfg)
        records = _train_records(self.splits)
        if not records:
            raise ConfigError(f"dataset '{cfg.dataset.name}' at '{cfg.dataset.root}' has no training images")
        check_images(self.splits)
        self.records = records
        self.image_paths = [r.path for r in records]
        self.camids = [r.camid for r in records]
        self.mask_paths = None
        if self.two:
            # every train mask must exist before any model is built (count + first few + the fix)
            self.mask_paths = check_masks(records, self.splits.root, cfg.dataset.mask_root)
        self.images = self._decoded_images()
        resuming = self.ckpt_path.exists()
        # resuming overwrites every weight: do not fetch ImageNet weights just to discard them
        build_cfg = cfg.replace(**{"model.pretrained": "none"}) if resuming else cfg
        with distributed.main_first():  # ImageNet weights: one download into the shared cache
            self.model: TwoBranchNet = build_network(build_cfg).to(self.device)
        if self.world > 1:
            from maskcl.models.sync_batchnorm import convert_sync_batchnorm

            convert_sync_batchnorm(self.model)  # BN over the global batch, as one process would
        self.branches = self._parallel_branches()
        params = [p for p in self.model.parameters() if p.requires_grad]
        # fused Adam: one kernel over all tensors (13× faster than the per-tensor loop on CPU)
        self.optimizer = torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=t.step_size, gamma=t.gamma)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        if resuming:
            self._resume()
        else:
            self.memories = self._init_memories()
        if self.world > 1:
            self.train_net = distributed.data_parallel(self.model, self.device)
            self.logger.log_info("world_size", self.world)
        self.logger.log_info("parallel_branches", self.branches is not None)
        self.logger.log_info("device", str(self.device))
        self.logger.log_info("n_train", len(self.image_paths))
        if not resuming:  # which file started the weights (two machines may resolve 'imagenet' differently)
            self.logger.log_info("weights_source", self.model.rgb.trunk.weights_source)

    def _parallel_branches(self) -> ParallelBranches | None:
        """train.parallel_branches where it applies: CPU, one process, two branches, >= 2 threads."""
        threads = torch.get_num_threads()
        if not (self.cfg.train.parallel_branches and self.two and self.device.type == "cpu"):
            return None
        if self.world > 1 or threads < 2:
            log.info("train.parallel_branches: off (%s)",
                     f"{self.world} processes" if self.world > 1 else "one torch thread")
            return None
        return ParallelBranches(self.model, threads)

    def _decoded_images(self) -> DecodedImages:
        """The run's decoded-image cache, filled now (train images, masks, then the test images)."""
        images = DecodedImages(self.cfg.train.image_cache_mb)
        if images.budget:
            images.warm(self.image_paths)
            if self.mask_paths is not None:
                images.warm(self.mask_paths, "mask", MaskError)
            if self.main:  # only rank 0 evaluates
                images.warm(_test_paths(self.splits))
            if self.main:
                log.info("image cache: %d decoded files, %.0f of %d MB", len(images), images.used / 2**20,
                         self.cfg.train.image_cache_mb)
        return images

    def _resume(self) -> None:
        state = load_checkpoint(self.ckpt_path)
        _check_resumable(state.get("config", {}), self.cfg, self.ckpt_path)
        load_model_state(self.model, state["model"], self.ckpt_path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.memories = {k: InstanceMemory.from_state_dict(v, self.device) for k, v in state["memories"].items()}
        self.history = list(state.get("history", []))
        self.start_epoch = int(state["epoch"])
        if self.start_epoch > self.cfg.train.epochs:
            raise CheckpointError(
                f"'{self.ckpt_path}' already holds {self.start_epoch} trained epochs but train.epochs is "
                f"{self.cfg.train.epochs}; expected train.epochs >= {self.start_epoch} (train.epochs="
                f"{self.start_epoch} returns that run as it is), or train into another --out folder"
            )
        restore_rng(state["rng"], self.generator)
        if self.main:
            log.info("resumed from '%s' after epoch %d", self.ckpt_path, self.start_epoch)

    def _extract(self, encode, paths, transform, desc: str) -> torch.Tensor:
        """``[N, D]`` features of ``paths``; each process extracts whole batches of its share."""
        rows = distributed.batch_aligned_shard(len(paths), self.cfg.eval.batch_size)
        if rows.stop > rows.start:
            local = extract_features(
                encode, paths[rows], transform, self.device, batch_size=self.cfg.eval.batch_size,
                workers=self.cfg.train.workers, amp=self.amp, desc=desc, progress=self.main,
                load=self.images.load,
            )
        else:  # more processes than batches: this one has nothing to extract
            local = torch.empty(0, self.model.dim, device=self.device)
        return distributed.all_gather_rows(local)

    @torch.no_grad()
    def _init_memories(self) -> dict[str, InstanceMemory]:
        """RGB and fusion memories from RGB features, mask memory from mask features (paper.md §2.2)."""
        t = self.cfg.train
        self.model.eval()
        momentum = t.momentum
        rgb_tf = eval_transform(t.height, t.width)
        # quirk: masks through the test transform *without* Grayscale (mask_memory_grey adds it)
        mask_tf = eval_transform(t.height, t.width, grey=t.mask_memory_grey)

        def rgb() -> torch.Tensor:
            return self._extract(self.model, self.image_paths, rgb_tf, "init rgb memory")

        def mask() -> torch.Tensor:
            return self._extract(self.model.mask_features, self.mask_paths, mask_tf, "init mask memory")

        if self.branches is not None:
            with self.branches.session() as branches:
                f_rgb, f_mask = branches.both(rgb, mask)
        else:
            f_rgb = rgb()
            f_mask = mask() if self.two else None
        memories = {"rgb": InstanceMemory(f_rgb, momentum)}
        if f_mask is not None:
            memories["mask"] = InstanceMemory(f_mask, momentum)
            if self.model.fusion is not None:
                memories["fusion"] = InstanceMemory(f_rgb, momentum)  # quirk: RGB features, not fused
        return memories

    # -- one epoch
    def _labels(self, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Pseudo-labels of every slot (computed on rank 0, handed to every process)."""

        def cluster() -> tuple[torch.Tensor, dict[str, float]]:
            start = time.perf_counter()
            try:
                if self.cfg.cluster.oracle != "none":  # a diagnostic: true labels, not the method
                    pl = oracle_labels(self.records, self.cfg.cluster.oracle)
                else:
                    pl = make_pseudo_labels(self.memories["rgb"].feats, self.cfg)
            except ClusteringError as exc:
                raise ClusteringError(f"epoch {epoch + 1}: {exc}") from None
            labels = torch.as_tensor(np.asarray(pl.labels), dtype=torch.long)
            stats = {
                "n_clusters": int(pl.n_clusters),
                "n_unclustered": int(pl.n_unclustered),
                "n_refined_out": int(getattr(pl, "n_refined_out", 0)),
                "cluster_time_s": time.perf_counter() - start,
            }
            return labels, stats

        labels, stats = distributed.on_main(cluster)
        for memory in self.memories.values():
            memory.set_labels(labels)
        return labels, stats

    def _neighbours(self, labels: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The epoch's neighbour tables ``(idx [C,K], sim [C,K])`` (rank 0's), or ``None``."""
        t = self.cfg.train
        k = curriculum_k(t.allknn, epoch, t.epochs)
        k = min(k, int(labels.max()) if len(labels) else 0)  # at most C-1 other clusters
        if not t.neighbour_loss or k <= 0:
            return None

        def tables() -> tuple[torch.Tensor, torch.Tensor]:
            source = self.memories.get("fusion", self.memories["rgb"])
            idx, sim = make_neighbours(source.feats, labels.to(source.device), k)
            idx, sim = idx.to(self.device).long(), sim.to(self.device).float()
            # train.neighbour_weight "authors" (the default, as their code runs) scales by Σ‖c‖²
            # (losses.authors_neighbour_weights); "cosine" keeps the true cosines
            if t.neighbour_weight == "authors":
                sim = authors_neighbour_weights(idx, sim, source.prototypes().to(self.device))
            return (idx.cpu(), sim.cpu()) if self.world > 1 else (idx, sim)

        idx, sim = distributed.on_main(tables)
        return idx.to(self.device), sim.to(self.device)

    def _loader(self, labels: torch.Tensor, epoch: int) -> DataLoader:
        """This process's rows of the epoch's global P×K sequence, each with its augmentation seed."""
        t = self.cfg.train
        mask_tf = paired = None
        if self.two:
            if t.paired_aug:
                paired = PairedTrainTransform(t.height, t.width)
            else:
                mask_tf = train_transform(t.height, t.width, grey=True)
        dataset = TrainPairs(
            self.image_paths, labels.tolist(), train_transform(t.height, t.width),
            self.mask_paths if self.two else None, mask_tf, paired, load=self.images.load,
        )
        sequence = PKCameraSampler(labels.tolist(), self.camids, t.num_instances, t.iters * t.batch_size, self.generator)
        sampler = GlobalBatchRows(sequence, t.batch_size, t.num_instances, self.cfg.seed, epoch, self.world, self.rank)
        return DataLoader(
            dataset, batch_size=self.local_batch, sampler=sampler, num_workers=t.workers, drop_last=True,
            pin_memory=self.device.type == "cuda", generator=self.generator,
            persistent_workers=False, prefetch_factor=4 if t.workers > 0 else None,
        )

    def _train_epoch(self, epoch: int, labels: torch.Tensor, nbrs) -> dict[str, float]:
        t = self.cfg.train
        self.model.train()
        meter = _Meter()
        self._trace: list[float] = []  # per-iteration total loss, kept in the history
        # every process must draw the neighbour-loss Bernoulli variables from rank 0's RNG state
        distributed.sync_rng_from_main()
        loader = self._loader(labels, epoch)
        forward = self.train_net if self.train_net is not None else self.model.forward_train
        bar = tqdm(loader, total=t.iters, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False,
                   disable=None if self.main else True)
        with self.branches.session() if self.branches is not None else nullcontext():
            for it, batch in enumerate(bar):
                values = self._train_step(epoch, it, batch, nbrs, forward)
                meter.add(values)
                self._trace.append(round(values["loss"], 5))
                bar.set_postfix(loss=f"{values['loss']:.3f}")
        return meter.means()

    def _train_step(self, epoch: int, it: int, batch, nbrs, forward) -> dict[str, float]:
        """One iteration: forward, the losses, backward, Adam, the memory update; the step's values."""
        images, masks, _, indexes = batch
        images = images.to(self.device, non_blocking=True)
        masks = masks.to(self.device, non_blocking=True) if self.two else None
        indexes = indexes.to(self.device)
        batch_indexes = distributed.all_gather(indexes)  # [B] the global batch, in global order
        labels_now = self.memories["rgb"].labels
        step = None
        if self.branches is not None:  # CPU only, where self.amp is off
            step = self.branches.forward(images, masks)
            out = step.outputs
        else:
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = forward(images, masks)
        parts: dict[str, torch.Tensor] = {}
        losses = maskcl_losses(
            out, self.memories, labels_now[indexes], nbrs, self.cfg.train,
            batch_targets=labels_now[batch_indexes] if self.world > 1 else None, parts=parts,
        )
        total = sum(losses.values())
        values = self._global_values(total, losses | parts)
        if not math.isfinite(values["loss"]):
            self._non_finite(epoch, it, values)
        self.optimizer.zero_grad(set_to_none=True)
        if step is not None and self.branches is not None:
            self.branches.backward(step, total)
        else:
            total.backward()
        self.optimizer.step()
        # memory update after the step, as the authors' autograd backward does (before their step;
        # the order is immaterial: memories are not parameters)
        self._update_memories(out, indexes if self.world == 1 else batch_indexes)
        return values

    def _global_values(self, total: torch.Tensor, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """``{"loss": …, "loss_rgb": …}`` of the global batch: the mean of the processes' values
        (every term's process mean is its global value), identical on every process."""
        if self.world == 1:
            return {"loss": total.item()} | {k: v.item() for k, v in losses.items()}
        stacked = torch.stack([total.detach().float(), *(v.detach().float() for v in losses.values())])
        numbers = distributed.mean_over_ranks(stacked).tolist()
        return dict(zip(["loss", *losses], numbers))

    def _update_memories(self, out: TrainOutputs, indexes: torch.Tensor) -> None:
        """Move each memory's slots toward the step's features; with several processes every
        process applies the whole global batch (``indexes [B]``), so the memories stay identical."""
        feats = {"rgb": out.f_rgb}
        if self.two:
            feats["mask"] = out.f_mask
            if out.h is not None:
                feats["fusion"] = out.h
        if self.world > 1:
            local = torch.cat([f.detach().float() for f in feats.values()], dim=1)  # [b, M·D]
            gathered = distributed.all_gather(local).split([f.shape[1] for f in feats.values()], dim=1)
            feats = dict(zip(feats, gathered))
        for name, x in feats.items():
            self.memories[name].update(x, indexes)

    def _non_finite(self, epoch: int, it: int, values: dict[str, float]) -> None:
        parts = ", ".join(f"{k}={v:.4g}" for k, v in values.items() if k != "loss")
        if self.ckpt_path.exists():
            good = f"'{self.ckpt_path}' (after epoch {epoch})"
        else:
            good = "none (no epoch had finished)"
        raise TrainingError(
            f"non-finite loss {values['loss']} at epoch {epoch + 1}, iteration {it + 1} ({parts}); "
            f"last good checkpoint: {good}; lower train.lr or try train.amp=false"
        )

    @torch.no_grad()
    def evaluate(self) -> dict[str, dict[str, float]]:
        """Score the RGB branch's ``f`` on the dataset's protocols (rank 0 scores, all receive)."""
        self.model.eval()
        return distributed.on_main(
            lambda: evaluate_model(self.model, self.splits, self.cfg, self.device, self.amp, load=self.images.load)
        )

    def _save(self, epoch_done: int) -> None:
        """The full checkpoint (when the policy keeps this epoch) and the run's JSON files."""
        if self._is_checkpoint_epoch(epoch_done):
            self._save_checkpoint(epoch_done)
        self._save_history()

    def _save_checkpoint(self, epoch_done: int) -> None:
        save_checkpoint(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "memories": {k: m.state_dict() for k, m in self.memories.items()},
                "epoch": epoch_done,
                "rng": capture_rng(self.generator),
                "config": self.cfg.to_dict(),
                "history": _without_timings(self.history),
            },
            self.ckpt_path,
        )

    def _save_history(self) -> None:
        _write_json(self.out_dir / HISTORY, _without_timings(self.history))
        timings = [{"epoch": e["epoch"], **{k: e[k] for k in TIMING_KEYS if k in e}} for e in self.history]
        _write_json(self.out_dir / TIMINGS, timings)

    def _is_checkpoint_epoch(self, epoch_done: int) -> bool:
        """train.checkpoint_every: resume replays the epochs after the newest checkpoint exactly."""
        return epoch_done % self.cfg.train.checkpoint_every == 0 or epoch_done == self.cfg.train.epochs

    def _is_eval_epoch(self, epoch_done: int) -> bool:
        return epoch_done % self.cfg.train.eval_step == 0 or epoch_done == self.cfg.train.epochs

    def _evaluate_into(self, entry: dict[str, Any]) -> None:
        """``entry["test"]`` = this epoch's scores; a failure names the checkpoint that kept the epoch."""
        eval_start = time.perf_counter()
        try:
            entry["test"] = self.evaluate()
        except MaskclError as exc:
            raise type(exc)(
                f"evaluation after epoch {entry['epoch']}: {exc} (the trained epoch is saved in "
                f"'{self.ckpt_path}': fix this and run again to resume)"
            ) from None
        entry["eval_time_s"] = time.perf_counter() - eval_start

    def run(self) -> TrainResult:
        t = self.cfg.train
        start_time = time.perf_counter()
        pending = self.history[-1] if self.history and self.start_epoch < t.epochs else None
        if pending is not None and "test" not in pending and self._is_eval_epoch(int(pending["epoch"])):
            # a run stopped during this epoch's evaluation (saved just before it): score it now
            self._evaluate_into(pending)
            self._log(pending, int(pending["epoch"]))
            distributed.on_main(lambda: self._save(self.start_epoch))
        for epoch in range(self.start_epoch, t.epochs):
            epoch_start = time.perf_counter()
            labels, stats = self._labels(epoch)
            nbrs = self._neighbours(labels, epoch)
            lr = self.optimizer.param_groups[0]["lr"]
            losses = self._train_epoch(epoch, labels, nbrs)
            self.scheduler.step()
            entry: dict[str, Any] = {
                "epoch": epoch + 1, **losses, **stats, "knn_k": 0 if nbrs is None else int(nbrs[0].shape[1]),
                "lr": lr, "iter_loss": self._trace,
            }
            step = epoch + 1
            entry["epoch_time_s"] = time.perf_counter() - epoch_start
            self.history.append(entry)
            if self._is_eval_epoch(epoch + 1):
                # one checkpoint per epoch, written with the scores; an evaluation that fails (an
                # unreadable gallery image, a full disk, Ctrl-C) first saves the trained epoch, so
                # only a killed process (OOM) loses it, and resume then replays it exactly
                try:
                    self._evaluate_into(entry)
                except BaseException:
                    distributed.on_main(lambda: self._save(epoch + 1))
                    raise
                entry["epoch_time_s"] = time.perf_counter() - epoch_start
            self._log(entry, step)
            distributed.on_main(lambda: self._save(epoch + 1))  # the others wait for the file
            if self.main:
                log.info(
                    "epoch %d/%d: loss %.3f, %d clusters, %d un-clustered, K=%d%s (%.1fs)",
                    epoch + 1, t.epochs, losses.get("loss", float("nan")), stats["n_clusters"],
                    stats["n_unclustered"], entry["knn_k"], _summary(entry.get("test")), entry["epoch_time_s"],
                )
        if not self.history:
            raise TrainingError(f"no epoch was trained (train.epochs={t.epochs}, checkpoint '{self.ckpt_path}')")
        last = self.history[-1]
        if "test" not in last:  # a finished run resumed with a larger eval_step: score it now
            last["test"] = self.evaluate()
        return TrainResult(
            metrics=last["test"],
            epochs=int(last["epoch"]),
            history=self.history,
            checkpoint=self.ckpt_path,
            best_on_test=best_on_test(self.history, self.splits.protocols),
            timings={"fit_s": time.perf_counter() - start_time},
        )

    def _log(self, entry: dict[str, Any], step: int) -> None:
        for key in ("loss", "loss_rgb", "loss_mask", "loss_fusion", "xview_instance", "xview_prototype"):
            if key in entry:
                self.logger.log_scalar(f"train.{key}", entry[key], step)
        self.logger.log_scalar("cluster.n_clusters", entry["n_clusters"], step)
        self.logger.log_scalar("cluster.n_unclustered", entry["n_unclustered"], step)
        if "cluster_time_s" in entry:  # absent from an epoch restored from the checkpoint (timings live apart)
            self.logger.log_scalar("cluster.time_s", entry["cluster_time_s"], step)
        self.logger.log_scalar("lr", entry["lr"], step)
        for protocol, metrics in entry.get("test", {}).items():
            for name in ("mAP", "rank1"):
                if name in metrics:
                    self.logger.log_scalar(f"test.{protocol}.{name}", metrics[name], step)


def _summary(test: dict | None) -> str:
    if not test:
        return ""
    protocol, metrics = next(iter(test.items()))
    return f", {protocol} mAP {metrics.get('mAP', float('nan')):.1f} R1 {metrics.get('rank1', float('nan')):.1f}"


def best_on_test(history: list[dict[str, Any]], protocols) -> dict[str, Any] | None:
    """The evaluated epoch with the best default-protocol test mAP (a test-set selection)."""
    scored = [h for h in history if h.get("test")]
    if not scored:
        return None
    protocol = protocols[0] if protocols and protocols[0] in scored[0]["test"] else next(iter(scored[0]["test"]))
    best = max(scored, key=lambda h: h["test"].get(protocol, {}).get("mAP", float("-inf")))
    return {"epoch": best["epoch"], "protocol": protocol, "metrics": best["test"],
            "note": "selected on the test set; not a valid model-selection result"}


def _test_paths(splits: DatasetSplits) -> list[Path]:
    """Query ∪ gallery files, each once, in a fixed order (an image may be in both)."""
    return list(dict.fromkeys([r.path for r in splits.query] + [r.path for r in splits.gallery]))


@torch.no_grad()
def evaluate_model(
    model: TwoBranchNet,
    splits: DatasetSplits,
    cfg: Config,
    device: torch.device,
    amp: bool = False,
    features_out: Path | None = None,
    load: Loader = load_rgb,
):
    """Extract RGB ``f`` for query ∪ gallery once and score every protocol of the dataset.

    ``features_out``: also save the features in :mod:`maskcl.eval.features` format (for
    ``maskcl visualize``). ``load`` reads a file (a run's decoded-image cache).
    """
    model.eval()
    paths = _test_paths(splits)
    row = {p: i for i, p in enumerate(paths)}
    feats = extract_features(
        model, paths, eval_transform(cfg.train.height, cfg.train.width), device,
        batch_size=cfg.eval.batch_size, workers=cfg.train.workers, amp=amp, desc="evaluate", load=load,
    ).cpu()
    query = feats[[row[r.path] for r in splits.query]]
    gallery = feats[[row[r.path] for r in splits.gallery]]
    if features_out is not None:
        from maskcl.eval.features import save_features

        save_features(features_out, query.numpy(), gallery.numpy(), splits.query, splits.gallery, root=splits.root)
    return score(query, gallery, splits, cfg)


def fit(cfg: Config, out_dir: str | Path, logger: RunLogger | None = None) -> TrainResult:
    """Train (or resume, or just return a finished run in ``out_dir``) and evaluate the last epoch.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process calls this: it joins the process group,
    trains its share of each global batch, and returns the same result on every process; only
    rank 0 writes ``out_dir`` and reports to ``logger``.
    """
    out_dir = Path(out_dir)
    with distributed.process_group(resolve_device(cfg.train.device)) as device:
        main = distributed.is_main()
        prepare_out_dir(out_dir)  # a file given as --out: one line, on every process
        # one training per folder: a second one refuses at once (rank 0 holds it for the run)
        with train_lock(out_dir) if main else nullcontext():
            if main:
                _remove_stale_temps(out_dir)
            run_logger = (logger or NullLogger()) if main else NullLogger()
            engine = Engine(cfg, out_dir, run_logger, device)
            engine.setup()
            return engine.run()


def _remove_stale_temps(out_dir: Path) -> None:
    """Temp files a killed save left (``last.pt.<random>.tmp`` is the checkpoint's size): removed
    while holding the folder's lock, so no live writer's file is taken."""
    removed = remove_stale_temps(out_dir)
    if removed:
        names = ", ".join(f"{name} ({size / 1e6:.1f} MB)" for name, size in removed[:5])
        log.info("removed %d unfinished temp file(s) left in '%s' by an interrupted run: %s", len(removed), out_dir, names)


def evaluate_checkpoint(
    cfg: Config, checkpoint: str | Path, features_out: str | Path | None = None
) -> dict[str, dict[str, float]]:
    """Score a checkpoint written by :func:`fit` on ``cfg``'s dataset (RGB branch only);
    ``features_out`` also saves the query/gallery features for retrieval pictures."""
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)
    splits = load_splits(cfg)
    check_images(splits, ("query", "gallery"))  # before any model is built
    device = resolve_device(cfg.train.device)
    model = build_network(cfg.replace(**{"model.pretrained": "none"})).to(device)
    load_model_state(model, state["model"], checkpoint)
    return evaluate_model(
        model, splits, cfg, device, cfg.train.amp and device.type == "cuda",
        features_out=Path(features_out) if features_out is not None else None,
    )
