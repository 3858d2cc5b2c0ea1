"""Human-parsing label sets (SCHP's LIP, ATR, Pascal-Person-Part) and the parsing → mask rules.

A parsing map is a ``[H, W]`` uint8 array of class ids, as SCHP writes it (a mode-"P" PNG whose
pixel values are the ids; reference/datasets.md §9). MaskCL's mask branch reads one image per
training sample; which image that is, is a knob (:data:`MASK_MODES`):

* ``silhouette``: every person label → 255, background → 0 (§10 a). ATR's *Bag* is not part of
  the body, so whether it counts is a parameter (``atr_bag``).
* ``no_clothes``: the silhouette minus the clothes-core group (§10 b), i.e. the clothes-invariant
  body parts (hair, face, arms, legs, optionally accessories). Pascal-Person-Part has no clothing
  classes, so this mode is refused for it.
* ``parsing_grey``: the authors' probable input: the palette PNG read with ``convert('RGB')`` and
  then greyed by torchvision's ``Grayscale`` (PIL's ITU-R 601 luma), so each class becomes one grey
  level (§10's table; some levels collide, e.g. LIP Hat and Left-leg are both 38).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskcl.errors import ConfigError, MaskError

MASK_MODES = ("silhouette", "no_clothes", "parsing_grey")


@dataclass(frozen=True)
class LabelSet:
    """One SCHP label set: class names by id, the SCHP input size and the groups the mask rules use.

    ``flip_pairs`` are the (left, right) ids a horizontal flip swaps (SCHP's flip test).
    ``clothes_core`` is §10's clothes group (removed by ``no_clothes``); ``accessories`` the optional
    group (kept by default); ``bag`` the id of a carried bag, if the set has one.
    """

    name: str
    names: tuple[str, ...]
    input_size: tuple[int, int]  # (H, W) of the network input SCHP was trained/evaluated at
    flip_pairs: tuple[tuple[int, int], ...]
    clothes_core: frozenset[int]
    accessories: frozenset[int]
    bag: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def id(self, name: str) -> int:
        """The class id of ``name`` (exact SCHP spelling, e.g. ``"Upper-clothes"``)."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"label set '{self.name}' has no class {name!r}; classes: {', '.join(self.names)}") from None


LIP = LabelSet(
    name="lip",
    names=(
        "Background", "Hat", "Hair", "Glove", "Sunglasses", "Upper-clothes", "Dress", "Coat",
        "Socks", "Pants", "Jumpsuits", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm",
        "Left-leg", "Right-leg", "Left-shoe", "Right-shoe",
    ),  # fmt: skip
    input_size=(473, 473),
    flip_pairs=((14, 15), (16, 17), (18, 19)),
    clothes_core=frozenset({5, 6, 7, 9, 10, 12}),
    accessories=frozenset({1, 3, 4, 8, 11, 18, 19}),
)

ATR = LabelSet(
    name="atr",
    names=(
        "Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress",
        "Belt", "Left-shoe", "Right-shoe", "Face", "Left-leg", "Right-leg", "Left-arm",
        "Right-arm", "Bag", "Scarf",
    ),  # fmt: skip
    input_size=(512, 512),
    flip_pairs=((9, 10), (12, 13), (14, 15)),
    clothes_core=frozenset({4, 5, 6, 7, 8}),
    accessories=frozenset({1, 3, 9, 10, 16, 17}),
    bag=16,
)

PASCAL = LabelSet(
    name="pascal",
    names=("Background", "Head", "Torso", "Upper Arms", "Lower Arms", "Upper Legs", "Lower Legs"),
    input_size=(512, 512),
    flip_pairs=(),  # its parts are not split into left/right
    clothes_core=frozenset(),
    accessories=frozenset(),
)

LABEL_SETS: dict[str, LabelSet] = {s.name: s for s in (LIP, ATR, PASCAL)}


def get_label_set(name: str | LabelSet) -> LabelSet:
    """The label set called ``name`` (``lip``, ``atr``, ``pascal``); a LabelSet passes through."""
    if isinstance(name, LabelSet):
        return name
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise ConfigError(f"unknown label set {name!r}; expected one of: {', '.join(LABEL_SETS)}") from None


def label_sets_with_classes(num_classes: int) -> list[str]:
    """Names of the label sets with ``num_classes`` classes (what a checkpoint's head size implies)."""
    return [s.name for s in LABEL_SETS.values() if s.num_classes == num_classes]


def voc_palette(num_classes: int = 256) -> list[int]:
    """SCHP's palette: the PASCAL-VOC bit-interleaved colour map, flattened ``[r0, g0, b0, r1, …]``.

    Bit ``3k`` / ``3k+1`` / ``3k+2`` of the class id sets bit ``7-k`` of red / green / blue, so
    1 → (128, 0, 0), 2 → (0, 128, 0), 8 → (64, 0, 0), 9 → (192, 0, 0).
    """
    palette: list[int] = []
    for label in range(num_classes):
        rgb = [0, 0, 0]
        bit, value = 7, label
        while value:
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << bit
            bit -= 1
            value >>= 3
        palette.extend(rgb)
    return palette


def grey_levels(num_classes: int = 256) -> np.ndarray:
    """Grey level of each class id after palette → RGB → ``convert('L')``: ``[num_classes]`` uint8.

    Uses PIL's integer luma ``(19595·R + 38470·G + 7471·B + 2^15) >> 16`` (ITU-R 601-2
    L = 0.299 R + 0.587 G + 0.114 B, rounded), which is what torchvision's ``Grayscale`` runs on a
    PIL image in the authors' mask transform.
    """
    rgb = np.asarray(voc_palette(num_classes), dtype=np.int64).reshape(num_classes, 3)
    luma = (19595 * rgb[:, 0] + 38470 * rgb[:, 1] + 7471 * rgb[:, 2] + 0x8000) >> 16
    return luma.astype(np.uint8)


def person_ids(label_set: str | LabelSet, atr_bag: bool = True) -> frozenset[int]:
    """Ids that count as the person for a silhouette: all but background (and Bag unless ``atr_bag``)."""
    labels = get_label_set(label_set)
    ids = set(range(1, labels.num_classes))
    if labels.bag is not None and not atr_bag:
        ids.discard(labels.bag)
    return frozenset(ids)


def kept_ids(
    mode: str, label_set: str | LabelSet, atr_bag: bool = True, drop_accessories: bool = False
) -> frozenset[int]:
    """Ids that become 255 in a binary mask of ``mode`` (``silhouette`` or ``no_clothes``)."""
    labels = get_label_set(label_set)
    ids = set(person_ids(labels, atr_bag))
    if mode == "silhouette":
        return frozenset(ids)
    if mode == "no_clothes":
        if not labels.clothes_core:
            raise ConfigError(
                f"masks.mode 'no_clothes' needs clothing classes; label set '{labels.name}' has none "
                f"(classes: {', '.join(labels.names)}); use mode 'silhouette'"
            )
        ids -= labels.clothes_core
        if drop_accessories:
            ids -= labels.accessories
        return frozenset(ids)
    raise ConfigError(f"masks.mode {mode!r} is not a binary mode; expected silhouette or no_clothes")


def mask_lut(
    mode: str, label_set: str | LabelSet, atr_bag: bool = True, drop_accessories: bool = False
) -> np.ndarray:
    """Lookup table class id → mask value, ``[256]`` uint8, so a whole map converts in one index.

    Ids beyond the label set map to 0 here; :func:`parsing_to_mask` rejects them before.
    """
    labels = get_label_set(label_set)
    if mode not in MASK_MODES:
        raise ConfigError(f"unknown mask mode {mode!r}; expected one of: {', '.join(MASK_MODES)}")
    lut = np.zeros(256, dtype=np.uint8)
    if mode == "parsing_grey":
        lut[: labels.num_classes] = grey_levels(labels.num_classes)
        return lut
    lut[sorted(kept_ids(mode, labels, atr_bag, drop_accessories))] = 255
    return lut


def parsing_to_mask(
    parsing: np.ndarray,
    mode: str = "silhouette",
    label_set: str | LabelSet = "lip",
    atr_bag: bool = True,
    drop_accessories: bool = False,
) -> np.ndarray:
    """Turn a parsing map into the mask the mask branch reads.

    Args:
        parsing: ``[H, W]`` integer class ids of ``label_set``.
        mode: ``silhouette`` | ``no_clothes`` (0/255) | ``parsing_grey`` (per-class grey levels).
        atr_bag: ATR only: whether Bag counts as person.
        drop_accessories: ``no_clothes`` only: also remove hats, shoes, scarves … (§10's option group).

    Returns:
        ``[H, W]`` uint8 mask.

    Raises:
        MaskError: the map holds an id outside the label set (wrong ``label_set`` or not a parsing map).
    """
    labels = get_label_set(label_set)
    parsing = np.asarray(parsing)
    if parsing.ndim != 2:
        raise MaskError(f"parsing map has shape {parsing.shape}; expected [H, W] class ids")
    if parsing.size and (int(parsing.max()) >= labels.num_classes or int(parsing.min()) < 0):
        found = sorted(int(v) for v in np.unique(parsing) if not 0 <= v < labels.num_classes)
        raise MaskError(
            f"parsing map holds class ids {found[:5]} outside label set '{labels.name}' "
            f"(ids 0..{labels.num_classes - 1}); wrong masks.label_set, or not a class-id PNG"
        )
    lut = mask_lut(mode, labels, atr_bag, drop_accessories)
    return lut[parsing.astype(np.intp, copy=False)]
