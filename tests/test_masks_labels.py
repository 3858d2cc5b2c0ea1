"""Label sets and parsing → mask rules, checked against hand-made maps and datasets.md §9–§10."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from maskcl.errors import ConfigError, MaskError
from maskcl.masks.labels import ATR, LIP, PASCAL, get_label_set, grey_levels, parsing_to_mask, voc_palette

# datasets.md §10, computed there from the palette (LIP ids 0..19)
GREY_TABLE = [0, 38, 75, 113, 15, 53, 90, 128, 19, 57, 94, 133, 34, 72, 109, 147, 38, 76, 113, 151]


def test_label_sets_match_schp_ids():
    assert (LIP.num_classes, ATR.num_classes, PASCAL.num_classes) == (20, 18, 7)
    assert LIP.id("Jumpsuits") == 10 and LIP.id("Right-shoe") == 19 and LIP.id("Face") == 13
    assert ATR.id("Bag") == 16 and ATR.id("Belt") == 8 and ATR.id("Left-arm") == 14
    assert PASCAL.names[3] == "Upper Arms"
    assert get_label_set("atr") is ATR
    with pytest.raises(ConfigError, match="lip, atr, pascal"):
        get_label_set("cihp")


def test_voc_palette_first_entries():
    palette = voc_palette(10)
    rgb = [tuple(palette[i : i + 3]) for i in range(0, 30, 3)]
    assert rgb == [
        (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128),
        (128, 0, 128), (0, 128, 128), (128, 128, 128), (64, 0, 0), (192, 0, 0),
    ]  # fmt: skip


def test_grey_levels_reproduce_the_table():
    assert grey_levels(20).tolist() == GREY_TABLE


def test_grey_levels_equal_pil_palette_png_to_rgb_to_grey():
    """The authors' path: palette PNG → convert('RGB') → Grayscale (PIL convert('L'))."""
    ids = np.arange(20, dtype=np.uint8).reshape(4, 5)
    png = Image.fromarray(ids)
    png.putpalette(voc_palette(20))
    buffer = io.BytesIO()
    png.save(buffer, format="PNG")
    grey = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").convert("L"))
    assert grey.ravel().tolist() == GREY_TABLE
    assert parsing_to_mask(ids, "parsing_grey", "lip").ravel().tolist() == GREY_TABLE


def test_lip_silhouette_and_no_clothes():
    # background, hair, upper-clothes, pants, face, left-arm, right-shoe, hat
    parsing = np.array([[0, 2, 5, 9], [13, 14, 19, 1]], dtype=np.uint8)
    assert parsing_to_mask(parsing, "silhouette", "lip").tolist() == [[0, 255, 255, 255], [255, 255, 255, 255]]
    assert parsing_to_mask(parsing, "no_clothes", "lip").tolist() == [[0, 255, 0, 0], [255, 255, 255, 255]]
    dropped = parsing_to_mask(parsing, "no_clothes", "lip", drop_accessories=True)
    assert dropped.tolist() == [[0, 255, 0, 0], [255, 255, 0, 0]]


def test_lip_no_clothes_removes_every_clothes_core_id():
    parsing = np.arange(20, dtype=np.uint8)[None]
    kept = parsing_to_mask(parsing, "no_clothes", "lip")[0]
    assert [i for i in range(20) if kept[i] == 0] == [0, 5, 6, 7, 9, 10, 12]


def test_atr_bag_is_configurable():
    # background, hair, upper-clothes, belt, bag, left-leg
    parsing = np.array([[0, 2, 4, 8, 16, 12]], dtype=np.uint8)
    assert parsing_to_mask(parsing, "silhouette", "atr").tolist() == [[0, 255, 255, 255, 255, 255]]
    assert parsing_to_mask(parsing, "silhouette", "atr", atr_bag=False).tolist() == [[0, 255, 255, 255, 0, 255]]
    assert parsing_to_mask(parsing, "no_clothes", "atr").tolist() == [[0, 255, 0, 0, 255, 255]]
    assert parsing_to_mask(parsing, "no_clothes", "atr", atr_bag=False).tolist() == [[0, 255, 0, 0, 0, 255]]


def test_pascal_silhouette_and_no_clothes_refused():
    parsing = np.array([[0, 1, 2, 6]], dtype=np.uint8)
    assert parsing_to_mask(parsing, "silhouette", "pascal").tolist() == [[0, 255, 255, 255]]
    with pytest.raises(ConfigError, match="no clothing classes|has none"):
        parsing_to_mask(parsing, "no_clothes", "pascal")


def test_id_outside_label_set_is_an_error():
    with pytest.raises(MaskError, match=r"\[19\].*pascal"):
        parsing_to_mask(np.array([[0, 19]], dtype=np.uint8), "silhouette", "pascal")


def test_unknown_mode():
    with pytest.raises(ConfigError, match="silhouette, no_clothes, parsing_grey"):
        parsing_to_mask(np.zeros((2, 2), np.uint8), "edges", "lip")
