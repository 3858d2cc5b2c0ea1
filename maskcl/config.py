"""Typed configuration built from ``params.yaml`` (or Sacred's config dict).

The tree mirrors ``params.yaml``: the knobs users sweep with ``dvc exp run -S`` (``seed``,
``method``, ``eps``, ``eps_gap``, ``k1``, ``k2``, ``min_samples``) sit at the top level; the rest
is grouped. :meth:`Config.from_dict` rejects unknown keys, casts ints written for float keys
(``-S eps=1`` writes an int) and numbers in scientific notation that YAML 1.1 reads as strings
(``1e-4``, ``1.0e12``: PyYAML, Sacred's ``with params.yaml`` and ``dvc exp run -S`` all go through
it) for float keys, and validates ranges, naming the offending key in the error.
Defaults are the authors' code defaults (method.md); the small synthetic run overrides them in
``params.yaml``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any, get_type_hints

import yaml

from maskcl.errors import ConfigError

METHODS = ("maskcl", "rgb")
MASK_SOURCES = ("ground_truth", "import", "schp")
MASK_MODES = ("silhouette", "no_clothes", "parsing_grey")
LABEL_SETS = ("lip", "atr", "pascal")
DEVICES = ("auto", "cpu", "cuda")
# a decimal number a float key accepts as a string: YAML 1.1 reads `1e-4` and `1.0e12` as strings
_FLOAT_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
ARCH_NAMES = ("resnet18", "resnet34", "resnet50", "mobilenet_v2")  # maskcl.models.backbone.ARCHS


@dataclass(frozen=True)
class DatasetConfig:
    name: str = "synthetic"  # registry key: synthetic, ltcc, prcc, vcclothes, celebreid, ...
    root: str = "generated/synthetic/LTCC_ReID"  # folder holding the dataset as its authors ship it
    mask_root: str = "generated/masks"  # silhouettes mirror the image tree under this folder


@dataclass(frozen=True)
class SynthConfig:
    """The synthetic clothes-changing dataset (DESIGN §5); ``seed`` is its own, not training's."""

    identities: int = 100  # split evenly between train and test
    outfits: int = 6  # outfits per identity
    cameras: int = 3
    images_per: int = 2  # images per (identity, outfit, camera)
    height: int = 128
    width: int = 64
    seed: int = 0
    keep_lower: float = 0.5  # probability that a new outfit re-uses a lower garment the person already wore
    shade: float = 0.0  # RGB std of each garment's own shade around its palette colour
    camera_strength: float = 1.0  # how far cameras stray from a neutral one (light, cast, backdrop, blur; 0: alike)


@dataclass(frozen=True)
class MasksConfig:
    source: str = "ground_truth"  # ground_truth (synthetic parsing), import (SCHP PNGs), schp
    mode: str = "silhouette"  # silhouette | no_clothes | parsing_grey (the authors' grey levels)
    label_set: str = "lip"  # lip | atr | pascal: the parsing maps' label ids
    parsing_dir: str = ""  # source=import/ground_truth: folder of parsing PNGs mirroring the images
    checkpoint: str = ""  # source=schp: path to an official SCHP .pth
    flip: bool = False  # SCHP flip test
    atr_bag: bool = True  # ATR label set: Bag counts as person in the silhouette
    drop_accessories: bool = False  # no_clothes: also remove hats, shoes, scarves, gloves
    batch_size: int = 8
    device: str = "auto"


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet50"  # resnet18 | resnet34 | resnet50 | mobilenet_v2
    pretrained: str = "imagenet"  # imagenet | none | path to a torchvision state dict
    last_stride: int = 1
    fusion: bool = True  # ablation: without the fusion head/memory when false
    # channels_last tensors and weights: 1.2–1.5× MobileNetV2 train steps on CPU (benchmarks/train_step.py);
    # the same arithmetic in another summation order (fp32 values agree to ~1e-6), not bit-identical
    channels_last: bool = False


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    iters: int = 400  # iterations per epoch (run_code.sh uses 200 for LTCC, VC-Clothes, Celeb-light)
    batch_size: int = 64
    num_instances: int = 4  # K images per pseudo-identity in a batch
    height: int = 256
    width: int = 128
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    step_size: int = 20  # StepLR
    gamma: float = 0.1
    temp: float = 0.05  # τ of the memory softmax
    momentum: float = 0.2  # memory slot update m ← 0.2·m + 0.8·x
    focal_gamma: float = 4.0
    allknn: int = 10  # neighbour-cluster curriculum ceiling (LTCC 10, PRCC 5, VC 3, Celeb 10)
    neighbour_loss: bool = True  # ablation switch
    neighbour_weight: str = "authors"  # authors (their cosinematrix: ≈ cos / #clusters, the code default) | cosine
    cross_view: bool = True  # ablation switch: RGB ↔ mask instance and prototype terms
    paired_aug: bool = False  # quirk: the authors augment image and mask independently
    mask_memory_grey: bool = False  # quirk: the authors initialise the mask memory without Grayscale
    eval_step: int = 5
    workers: int = 4
    # decoded images (and masks) kept in memory up to this many MB: a small set decodes once per run
    # instead of once per draw; the pixels are the same either way (0: decode every time)
    image_cache_mb: int = 0
    # a full checkpoint (weights, optimizer, memories, RNG) every N epochs and after the last;
    # resume replays the epochs after the newest one exactly (they are seeded), so N trades disk
    # writes against the work a crash repeats, never the result
    checkpoint_every: int = 1
    # CPU, one process, maskcl, >= 2 torch threads: the RGB and mask branches run side by side on
    # half the threads each (maskcl.engine.branches), bit-identical to a one-thread run, ~1.3x the
    # two-thread joint step on 2 cores; ignored elsewhere
    parallel_branches: bool = False
    amp: bool = False  # bf16 autocast on GPU
    device: str = "auto"


@dataclass(frozen=True)
class ClusterConfig:
    refine: bool = True  # the authors' --cr cluster refinement (on in every published run)
    ratio_cluster: float = 1.0
    knn: str = "exact"  # exact | approx (IVF search over k-means lists; exact cosines of what it finds)
    # approx only: lists searched per sample (recall and cost grow with it; at 100k images nprobe 8
    # gives pseudo-label ARI 0.89 against exact, 32 gives 0.97: benchmarks/README.md) and the
    # number of lists (0 = about 2·sqrt(N))
    nprobe: int = 8
    nlist: int = 0
    backend: str = "auto"  # auto (= torch: faster than faiss here) | faiss | torch
    # none = unsupervised (the method). identity / clothes replace the pseudo-labels by the true
    # identities (the supervised upper bound) / the true outfits (perfect clothes-level clusters):
    # diagnostics that separate a clustering failure from a representation failure, never a
    # result of the method
    oracle: str = "none"


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 128
    prcc_trials: int = 10  # single-shot PRCC draws averaged (MaskCL code)


@dataclass(frozen=True)
class Config:
    seed: int = 111
    method: str = "maskcl"  # maskcl | rgb (the RGB-only baseline, same engine)
    eps: float = 0.6
    eps_gap: float = 0.02
    k1: int = 30
    k2: int = 6
    min_samples: int = 4
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    masks: MasksConfig = field(default_factory=MasksConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "Config":
        config = _build(cls, data, prefix="", source=source)
        validate(config, source)
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Config":
        path = Path(path)
        return cls.from_dict(read_yaml_mapping(path), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> "Config":
        """A copy with dotted-key overrides, validated: ``cfg.replace(**{"train.epochs": 2})``."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for depth, key in enumerate(parents):
                group = ".".join(parents[: depth + 1])
                if key not in node:
                    groups = sorted(k for k, v in node.items() if isinstance(v, dict))
                    raise ConfigError(f"unknown key '{dotted}': no group '{group}'; expected one of: {', '.join(groups)}")
                node = node[key]
                if not isinstance(node, dict):
                    raise ConfigError(
                        f"key '{dotted}': '{group}' is not a group (it is a single value, {node!r}), so it has no "
                        f"key '{'.'.join(parents[depth + 1:] + [leaf])}'; expected '{group}=<value>' or a key of a "
                        "group, e.g. 'train.lr'"
                    )
            node[leaf] = value
        return Config.from_dict(data)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds; a missing file, bad YAML or a non-mapping is one
    :class:`ConfigError` line naming the file (and the line and column of a syntax error)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file '{path}' is a folder; expected a YAML file such as params.yaml") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not text; expected a YAML file such as params.yaml") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"config file '{path}' is not valid YAML{at}: {problem}; expected 'key: value' lines") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}': expected a mapping at the top, found {type(data).__name__}")
    return data


def flatten_dict(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``: the dotted keys of ``--set``, ``dvc exp run -S`` and
    the report (lists, scalars and empty mappings are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_dict(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], ignore: Sequence[str] = ()) -> list[str]:
    """``"key: old → new"`` for each dotted key whose value differs between two nested configs.

    ``ignore`` names keys that may differ (an entry ending in ``.`` covers a whole group): what a
    caller deems not to change what a run learns.
    """
    flat_old, flat_new = flatten_dict(old), flatten_dict(new)
    return [
        f"{key}: {flat_old.get(key)!r} → {flat_new.get(key)!r}"
        for key in sorted(set(flat_old) | set(flat_new))
        if flat_old.get(key) != flat_new.get(key)
        and not any(key == p or (p.endswith(".") and key.startswith(p)) for p in ignore)
    ]


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<top>'}' must be a mapping, found {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}'; expected one of: {', '.join(sorted(names))}"
        )
    values: dict[str, Any] = {}
    for name, value in data.items():
        values[name] = _coerce(hints[name], value, prefix + name, source)
    return cls(**values)


def _coerce(kind: Any, value: Any, key: str, source: str) -> Any:
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, key + ".", source)
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        raise TypeError(f"unsupported union for {key}")  # pragma: no cover - the tree has none
    expected = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}[kind]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # `dvc exp run -S eps=1` writes an int
    if kind is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 (PyYAML, Sacred, DVC) reads `1e-4` as a string
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{source}: '{key}' must be {expected} (true/false), found {value!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{source}: '{key}' must be {expected}, found {value!r}")
    if kind is str and value is None:
        return ""
    if not isinstance(value, kind):
        raise ConfigError(f"{source}: '{key}' must be {expected}, found {value!r}")
    return value


def _require(condition: bool, source: str, key: str, found: Any, expected: str) -> None:
    if not condition:
        raise ConfigError(f"{source}: '{key}' is {found!r}; expected {expected}")


def validate(cfg: Config, source: str = "config") -> None:
    """Range checks that types cannot express; each names the key and the valid range."""
    r = _require
    r(cfg.method in METHODS, source, "method", cfg.method, f"one of {', '.join(METHODS)}")
    r(cfg.eps > 0, source, "eps", cfg.eps, "a number > 0")
    r(0 <= cfg.eps_gap < cfg.eps, source, "eps_gap", cfg.eps_gap, f"0 <= eps_gap < eps ({cfg.eps})")
    r(cfg.k1 >= 1, source, "k1", cfg.k1, "an integer >= 1")
    r(1 <= cfg.k2 <= cfg.k1, source, "k2", cfg.k2, f"1 <= k2 <= k1 ({cfg.k1})")
    r(cfg.min_samples >= 1, source, "min_samples", cfg.min_samples, "an integer >= 1")
    s = cfg.synth
    r(s.identities >= 4 and s.identities % 2 == 0, source, "synth.identities", s.identities, "an even integer >= 4")
    r(1 <= s.outfits <= 10, source, "synth.outfits", s.outfits, "an integer from 1 to 10 (each outfit has its own upper colour of 10)")
    r(0.0 <= s.keep_lower <= 1.0, source, "synth.keep_lower", s.keep_lower, "a probability from 0 to 1")
    r(0.0 <= s.camera_strength <= 1.0, source, "synth.camera_strength", s.camera_strength, "a scale from 0 (neutral cameras) to 1")
    r(0.0 <= s.shade <= 128.0, source, "synth.shade", s.shade, "an RGB standard deviation from 0 to 128")
    r(s.cameras >= 2, source, "synth.cameras", s.cameras, "an integer >= 2")
    r(s.images_per >= 1, source, "synth.images_per", s.images_per, "an integer >= 1")
    r(s.height >= 32 and s.width >= 16, source, "synth.height/width", (s.height, s.width), "at least 32×16")
    m = cfg.masks
    r(m.source in MASK_SOURCES, source, "masks.source", m.source, f"one of {', '.join(MASK_SOURCES)}")
    r(m.mode in MASK_MODES, source, "masks.mode", m.mode, f"one of {', '.join(MASK_MODES)}")
    r(m.label_set in LABEL_SETS, source, "masks.label_set", m.label_set, f"one of {', '.join(LABEL_SETS)}")
    r(m.batch_size >= 1, source, "masks.batch_size", m.batch_size, "an integer >= 1")
    r(m.device in DEVICES, source, "masks.device", m.device, f"one of {', '.join(DEVICES)}")
    mo = cfg.model
    r(mo.arch in ARCH_NAMES, source, "model.arch", mo.arch, f"one of {', '.join(ARCH_NAMES)}")
    r(mo.last_stride in (1, 2), source, "model.last_stride", mo.last_stride, "1 or 2")
    t = cfg.train
    r(t.epochs >= 1, source, "train.epochs", t.epochs, "an integer >= 1")
    r(t.iters >= 1, source, "train.iters", t.iters, "an integer >= 1")
    r(t.num_instances >= 1, source, "train.num_instances", t.num_instances, "an integer >= 1")
    r(
        t.batch_size >= t.num_instances and t.batch_size % t.num_instances == 0,
        source,
        "train.batch_size",
        t.batch_size,
        f"a multiple of train.num_instances ({t.num_instances})",
    )
    r(t.height >= 32 and t.width >= 16, source, "train.height/width", (t.height, t.width), "at least 32×16")
    r(t.lr > 0, source, "train.lr", t.lr, "a number > 0")
    r(t.weight_decay >= 0, source, "train.weight_decay", t.weight_decay, "a number >= 0")
    r(t.step_size >= 1, source, "train.step_size", t.step_size, "an integer >= 1")
    r(0 < t.gamma <= 1, source, "train.gamma", t.gamma, "0 < gamma <= 1")
    r(t.temp > 0, source, "train.temp", t.temp, "a number > 0")
    r(0 <= t.momentum < 1, source, "train.momentum", t.momentum, "0 <= momentum < 1")
    r(t.focal_gamma >= 0, source, "train.focal_gamma", t.focal_gamma, "a number >= 0")
    r(t.allknn >= 0, source, "train.allknn", t.allknn, "an integer >= 0")
    r(t.neighbour_weight in ("cosine", "authors"), source, "train.neighbour_weight", t.neighbour_weight, "cosine or authors")
    r(t.eval_step >= 1, source, "train.eval_step", t.eval_step, "an integer >= 1")
    r(t.workers >= 0, source, "train.workers", t.workers, "an integer >= 0")
    r(t.image_cache_mb >= 0, source, "train.image_cache_mb", t.image_cache_mb, "an integer >= 0 (MB; 0 = no cache)")
    r(t.checkpoint_every >= 1, source, "train.checkpoint_every", t.checkpoint_every, "an integer >= 1 (epochs)")
    r(t.device in DEVICES, source, "train.device", t.device, f"one of {', '.join(DEVICES)}")
    c = cfg.cluster
    r(c.ratio_cluster > 0, source, "cluster.ratio_cluster", c.ratio_cluster, "a number > 0")
    r(c.knn in ("exact", "approx"), source, "cluster.knn", c.knn, "exact or approx")
    r(c.nprobe >= 1, source, "cluster.nprobe", c.nprobe, "an integer >= 1")
    r(c.nlist >= 0, source, "cluster.nlist", c.nlist, "an integer >= 0 (0 = about 2*sqrt(N) lists)")
    r(c.backend in ("auto", "faiss", "torch"), source, "cluster.backend", c.backend, "auto, faiss or torch")
    r(c.oracle in ("none", "identity", "clothes"), source, "cluster.oracle", c.oracle, "none, identity or clothes")
    e = cfg.eval
    r(e.batch_size >= 1, source, "eval.batch_size", e.batch_size, "an integer >= 1")
    r(e.prcc_trials >= 1, source, "eval.prcc_trials", e.prcc_trials, "an integer >= 1")
