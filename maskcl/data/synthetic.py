"""A procedural clothes-changing pedestrian dataset, written in the LTCC on-disk format.

Why it exists: no real benchmark can be downloaded here, yet the pipeline, the loaders and the
method's premise must be exercised for real. The generator makes the premise testable:
identity lives only in clothes-invariant traits (height, body proportions, head and hair shape,
skin and hair colour, gait), while clothes colours and patterns come from a palette *shared
across identities* and change between outfits, so RGB appearance alone confuses people wearing
similar clothes and separates one person's outfits; the silhouette keeps the body shape.
Cameras change background, lighting, scale and blur.

Output (``out`` folder)::

    LTCC_ReID/train/*.png  query/*.png  test/*.png      LTCC naming PPP_O_cCC_FFFFFF.png
    LTCC_ReID/info/cloth-change_id_{train,test}.txt, cloth-unchange_id_{train,test}.txt
    parsing/{train,query,test}/<stem>.png              LIP label ids, VOC palette (SCHP format)
    synthetic.json                                      the spec and every identity's traits

Every image is drawn from its own random stream derived from (seed, pid, outfit, camera, index),
so the same seed gives byte-identical files whatever the order of generation.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from maskcl.errors import OutputExistsError

log = logging.getLogger(__name__)

# LIP label ids (datasets.md §9) used by the renderer
BACKGROUND, HAIR, UPPER, PANTS, FACE = 0, 2, 5, 9, 13
LEFT_ARM, RIGHT_ARM, LEFT_LEG, RIGHT_LEG, LEFT_SHOE, RIGHT_SHOE = 14, 15, 16, 17, 18, 19

# Clothes palette shared by every identity (RGB), so different people wear similar clothes.
CLOTHES_PALETTE = np.array(
    [
        [200, 30, 30], [30, 60, 200], [40, 150, 60], [230, 200, 40], [240, 240, 240],
        [30, 30, 30], [120, 60, 160], [240, 130, 30], [110, 110, 110], [90, 55, 30],
    ],
    dtype=np.float32,
)
SKIN_TONES = np.array(
    [[255, 224, 196], [241, 194, 155], [224, 172, 125], [198, 134, 92], [141, 85, 54], [90, 56, 38]],
    dtype=np.float32,
)
HAIR_COLOURS = np.array(
    [[20, 15, 10], [70, 45, 25], [140, 95, 50], [215, 185, 120], [160, 160, 160], [150, 50, 20]],
    dtype=np.float32,
)
PATTERNS = ("plain", "stripes", "checks")
BACKGROUND_CAMERA_SHARE = 0.3  # how much of a crop's background colour comes from its camera
# A crop's own background: a grey level with a little colour (streets, walls, floors), so the person
# and the clothes, not a saturated backdrop, dominate the image as in detector crops
BACKGROUND_GREY = (60.0, 200.0)
BACKGROUND_CHROMA = 14.0
OWNED_OUTPUTS = ("LTCC_ReID", "parsing", "synthetic.json")


@dataclass(frozen=True)
class SynthSpec:
    identities: int = 100
    outfits: int = 6
    cameras: int = 3
    images_per: int = 2
    height: int = 128
    width: int = 64
    seed: int = 0
    keep_lower: float = 0.5  # probability that an outfit re-uses a lower garment (and shoes) already worn
    shade: float = 0.0  # RGB std of a garment's own shade around its palette colour (0: the palette colour itself)
    camera_strength: float = 1.0  # how far cameras stray from a neutral one (light, cast, backdrop, blur; 0: alike)


@dataclass(frozen=True)
class Body:
    """Clothes-invariant traits: these alone carry identity."""

    stature: float  # fraction of the frame height at camera scale 1
    shoulder: float  # shoulder width / stature
    hip: float  # hip width / stature
    leg: float  # leg length / stature
    head: float  # head height / stature
    head_aspect: float  # head width / head height
    hair_style: int  # 0 short, 1 long, 2 bun
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    stride: float  # gait: leg spread
    arm_swing: float


@dataclass(frozen=True)
class Outfit:
    upper: int  # palette index
    lower: int
    shoes: int
    pattern: str
    long_sleeves: bool
    shorts: bool
    # A garment's shade: its offset from the palette colour. Real clothes of one colour name differ
    # (navy vs royal blue), so two people in "blue" are alike without being the same outfit.
    upper_shade: tuple[float, float, float] = (0.0, 0.0, 0.0)
    lower_shade: tuple[float, float, float] = (0.0, 0.0, 0.0)
    shoes_shade: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Camera:
    background: tuple[float, float, float]
    gradient: float
    light: float  # brightness multiplier
    tint: tuple[float, float, float]
    scale: float  # person size multiplier
    blur: float  # Gaussian sigma in pixels
    texture: float  # background noise amplitude


def _stream(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def _body(seed: int, pid: int) -> Body:
    rng = _stream(seed, 1, pid)
    return Body(
        stature=float(rng.uniform(0.80, 0.95)),
        shoulder=float(rng.uniform(0.20, 0.32)),
        hip=float(rng.uniform(0.14, 0.24)),
        leg=float(rng.uniform(0.40, 0.52)),
        head=float(rng.uniform(0.11, 0.16)),
        head_aspect=float(rng.uniform(0.65, 0.95)),
        hair_style=int(rng.integers(0, 3)),
        skin=tuple(float(v) for v in SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.normal(0, 6, 3)),
        hair=tuple(float(v) for v in HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] + rng.normal(0, 6, 3)),
        stride=float(rng.uniform(0.0, 0.35)),
        arm_swing=float(rng.uniform(0.0, 0.3)),
    )


def _outfits(seed: int, pid: int, count: int, keep_lower: float = 0.0) -> list[Outfit]:
    """Outfits of one person: each has an upper garment no earlier outfit had (colour); its lower
    garment is, with probability ``keep_lower``, one the person already wore (people re-wear
    trousers under another top, as in LTCC's clothes changes), else one they never wore."""
    rng = _stream(seed, 2, pid)
    outfits: list[Outfit] = []
    while len(outfits) < count:
        candidate = Outfit(
            upper=int(rng.integers(len(CLOTHES_PALETTE))),
            lower=int(rng.integers(len(CLOTHES_PALETTE))),
            shoes=int(rng.integers(len(CLOTHES_PALETTE))),
            pattern=PATTERNS[int(rng.integers(len(PATTERNS)))],
            long_sleeves=bool(rng.random() < 0.5),
            shorts=bool(rng.random() < 0.25),
        )
        reuse = bool(outfits) and rng.random() < keep_lower
        if reuse:
            worn = outfits[int(rng.integers(len(outfits)))]
            candidate = replace(candidate, lower=worn.lower, shorts=worn.shorts, shoes=worn.shoes)
        if all(candidate.upper != o.upper for o in outfits) and (
            reuse or all(candidate.lower != o.lower for o in outfits)
        ):
            outfits.append(candidate)
    return outfits


def _shaded(seed: int, pid: int, outfits: list[Outfit], shade: float) -> list[Outfit]:
    """Give every garment its own shade; a re-worn lower garment (and its shoes) keeps the shade
    it had, so it is the same piece of clothing. Drawn from a stream of its own: ``shade=0``
    leaves every earlier dataset byte-identical."""
    if shade <= 0:
        return outfits
    rng = _stream(seed, 6, pid)
    worn: dict[tuple[int, bool, int], tuple[tuple[float, ...], tuple[float, ...]]] = {}
    shaded = []
    for outfit in outfits:
        upper, lower, shoes = (tuple(float(v) for v in rng.normal(0.0, shade, 3)) for _ in range(3))
        key = (outfit.lower, outfit.shorts, outfit.shoes)
        lower, shoes = worn.setdefault(key, (lower, shoes))
        shaded.append(replace(outfit, upper_shade=upper, lower_shade=lower, shoes_shade=shoes))
    return shaded


def _camera(seed: int, cam: int, strength: float = 1.0) -> Camera:
    """``strength`` scales how far each camera strays from a neutral one: its brightness (±25 % at
    1), colour cast (±15 % per channel), backdrop colour, vertical gradient, blur (σ ≤ 1.2 px),
    texture and scale. Strong camera effects recolour and soften everything a camera sees, so
    features group images by camera before they group them by outfit; 0 makes cameras identical
    (crops still differ)."""
    rng = _stream(seed, 3, cam)
    background = rng.uniform(60, 200, 3)
    gradient = float(rng.uniform(-40, 40))
    light = float(rng.uniform(0.7, 1.2))
    tint = rng.uniform(0.85, 1.15, 3)
    scale = float(rng.uniform(0.93, 1.03))  # detector crops: the person fills the box
    blur = float(rng.uniform(0.0, 1.2))
    texture = float(rng.uniform(2, 14))

    def toward(neutral: float, value: float) -> float:
        return float(value) if strength == 1.0 else float(neutral + strength * (value - neutral))

    return Camera(
        background=tuple(toward(130.0, v) for v in background),
        gradient=toward(0.0, gradient),
        light=toward(0.95, light),
        tint=tuple(toward(1.0, v) for v in tint),
        scale=toward(0.98, scale),
        blur=toward(0.6, blur),
        texture=toward(8.0, texture),
    )


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1.0


def _segment(yy: np.ndarray, xx: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], r: float) -> np.ndarray:
    """Pixels within distance r of the segment p0→p1 (a limb)."""
    (y0, x0), (y1, x1) = p0, p1
    dy, dx = y1 - y0, x1 - x0
    length2 = max(dy * dy + dx * dx, 1e-6)
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / length2, 0.0, 1.0)
    return (yy - (y0 + t * dy)) ** 2 + (xx - (x0 + t * dx)) ** 2 <= r * r


def render(body: Body, outfit: Outfit, camera: Camera, height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one pedestrian: returns ``image: [H, W, 3] uint8`` and ``parsing: [H, W] uint8`` (LIP ids)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    labels = np.zeros((height, width), dtype=np.uint8)
    stature = body.stature * camera.scale * height * rng.uniform(0.97, 1.03)
    bottom = height * rng.uniform(0.95, 0.985)
    top = bottom - stature
    cx = width / 2 + rng.normal(0, width * 0.03)
    phase = rng.uniform(-1, 1)  # gait phase of this frame

    head_h = body.head * stature
    head_cy = top + head_h / 2
    neck_y = top + head_h * 1.05
    hip_y = bottom - body.leg * stature
    shoulder_half = body.shoulder * stature / 2
    hip_half = body.hip * stature / 2
    limb_r = max(0.035 * stature, 1.0)

    # legs (skin first; trousers drawn over them), feet at the bottom
    spread = body.stride * phase * body.leg * stature * 0.5
    feet = {LEFT_LEG: (bottom - limb_r, cx - hip_half * 0.5 - spread), RIGHT_LEG: (bottom - limb_r, cx + hip_half * 0.5 + spread)}
    for label, foot in feet.items():
        start = (hip_y, cx - hip_half * 0.5 if label == LEFT_LEG else cx + hip_half * 0.5)
        leg = _segment(yy, xx, start, foot, limb_r * 1.25)
        labels[leg] = label
        trousers_end = hip_y + (0.35 if outfit.shorts else 0.93) * (foot[0] - hip_y)
        labels[leg & (yy <= trousers_end)] = PANTS
        shoe = _ellipse(yy, xx, foot[0], foot[1] + (-1 if label == LEFT_LEG else 1) * limb_r * 0.4, limb_r * 1.0, limb_r * 1.6)
        labels[shoe] = LEFT_SHOE if label == LEFT_LEG else RIGHT_SHOE
    # pelvis under the torso
    pelvis = (yy >= hip_y - limb_r) & (yy <= hip_y + limb_r * 1.5) & (np.abs(xx - cx) <= hip_half)
    labels[pelvis] = PANTS

    # torso: trapezoid from the shoulders to the hips
    frac = np.clip((yy - neck_y) / max(hip_y - neck_y, 1.0), 0, 1)
    half_width = shoulder_half + (hip_half - shoulder_half) * frac
    torso = (yy >= neck_y) & (yy <= hip_y + limb_r) & (np.abs(xx - cx) <= half_width)
    labels[torso] = UPPER

    # arms swing against the legs
    swing = body.arm_swing * phase * stature * 0.12
    hand_y = neck_y + 0.42 * stature
    for label, side in ((LEFT_ARM, -1), (RIGHT_ARM, 1)):
        shoulder = (neck_y + limb_r, cx + side * shoulder_half)
        hand = (hand_y, cx + side * (shoulder_half + limb_r) + side * swing)
        arm = _segment(yy, xx, shoulder, hand, limb_r)
        labels[arm] = label
        sleeve_end = shoulder[0] + (0.95 if outfit.long_sleeves else 0.35) * (hand[0] - shoulder[0])
        labels[arm & (yy <= sleeve_end)] = UPPER

    # head and hair
    head_rx = head_h / 2 * body.head_aspect
    face = _ellipse(yy, xx, head_cy, cx, head_h / 2, head_rx)
    if body.hair_style == 1:  # long hair falls behind the head onto the shoulders
        labels[_ellipse(yy, xx, head_cy + head_h * 0.35, cx, head_h * 0.85, head_rx * 1.15) & (labels != UPPER)] = HAIR
    labels[face] = FACE
    cap = _ellipse(yy, xx, head_cy - head_h * 0.12, cx, head_h * 0.45, head_rx * 1.08) & (yy <= head_cy - head_h * 0.1)
    labels[cap] = HAIR
    if body.hair_style == 2:  # bun on top
        labels[_ellipse(yy, xx, top - head_h * 0.05, cx, head_h * 0.2, head_h * 0.2)] = HAIR

    image = _paint(labels, body, outfit, camera, yy, xx, rng)
    return image, labels


def _paint(labels: np.ndarray, body: Body, outfit: Outfit, camera: Camera, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = labels.shape
    # Each crop sees another patch of the scene: the background is mostly the image's own, with
    # a camera cast. (A per-camera constant backdrop would let an RGB model, or a randomly
    # initialised one, cluster by camera instead of by person.)
    own = (rng.uniform(*BACKGROUND_GREY) + rng.normal(0, BACKGROUND_CHROMA, 3)).astype(np.float32)
    background = BACKGROUND_CAMERA_SHARE * np.array(camera.background, dtype=np.float32) + (1 - BACKGROUND_CAMERA_SHARE) * own
    canvas = np.broadcast_to(background, (height, width, 3)).copy()
    canvas += (yy / height - 0.5)[..., None] * (camera.gradient + rng.normal(0, 20))
    canvas += gaussian_filter(rng.normal(0, camera.texture, (height, width)), 1.0)[..., None]

    skin = np.array(body.skin, dtype=np.float32)
    colours = {
        HAIR: np.array(body.hair, dtype=np.float32),
        FACE: skin, LEFT_ARM: skin, RIGHT_ARM: skin, LEFT_LEG: skin, RIGHT_LEG: skin,
        PANTS: _garment(outfit.lower, outfit.lower_shade),
        LEFT_SHOE: _garment(outfit.shoes, outfit.shoes_shade) * 0.6,
        RIGHT_SHOE: _garment(outfit.shoes, outfit.shoes_shade) * 0.6,
    }
    for label, colour in colours.items():
        canvas[labels == label] = colour
    upper = labels == UPPER
    upper_colour = np.broadcast_to(_garment(outfit.upper, outfit.upper_shade), (height, width, 3)).copy()
    period = max(height // 16, 2)
    if outfit.pattern == "stripes":
        upper_colour[(yy.astype(int) // period) % 2 == 1] *= 0.55
    elif outfit.pattern == "checks":
        upper_colour[((yy.astype(int) // period) + (xx.astype(int) // period)) % 2 == 1] *= 0.55
    canvas[upper] = upper_colour[upper]
    # cloth shading and sensor noise
    person = labels != BACKGROUND
    canvas[person] *= rng.uniform(0.92, 1.08)
    canvas *= camera.light * np.array(camera.tint, dtype=np.float32)
    if camera.blur > 0.05:
        canvas = gaussian_filter(canvas, sigma=(camera.blur, camera.blur, 0))
    canvas += rng.normal(0, 3.0, canvas.shape)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _garment(palette_index: int, shade: tuple[float, float, float]) -> np.ndarray:
    return np.clip(CLOTHES_PALETTE[palette_index] + np.array(shade, dtype=np.float32), 0, 255)


def voc_palette() -> list[int]:
    """The PASCAL VOC bit-interleaved palette SCHP writes into its PNGs (256 RGB triples)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.extend((r, g, b))
    return palette


def _assign_split(spec: SynthSpec) -> dict[tuple[int, int, int, int], str]:
    """Train ids are the first half; for test ids one random camera per outfit gives the query."""
    rng = _stream(spec.seed, 4)
    split: dict[tuple[int, int, int, int], str] = {}
    train_ids = spec.identities // 2
    for pid in range(spec.identities):
        for outfit in range(spec.outfits):
            query_cam = int(rng.integers(spec.cameras))
            for cam in range(spec.cameras):
                for index in range(spec.images_per):
                    if pid < train_ids:
                        split[(pid, outfit, cam, index)] = "train"
                    elif cam == query_cam and index == 0:
                        split[(pid, outfit, cam, index)] = "query"
                    else:
                        split[(pid, outfit, cam, index)] = "test"
    return split


def generate_synthetic(spec: SynthSpec, out: Path, force: bool = False, progress: bool = True) -> Path:
    """Write the dataset under ``out`` and return the LTCC root (``out/LTCC_ReID``).

    Generation happens in a temporary sibling folder that is moved into place at the end, so an
    interrupted run never leaves a half dataset that a later stage could mistake for a whole one.
    """
    out = Path(out)
    existing = [out / name for name in OWNED_OUTPUTS if (out / name).exists()]
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output '{out}' is a file; expected a folder (or a path that does not exist)")
    if out.exists() and any(out.iterdir()) and not force:
        raise OutputExistsError(
            f"output folder '{out}' is not empty; pass --force to replace the synthetic dataset in it"
        )
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".synth-", dir=out))
    try:
        _write(spec, staging, progress)
        for path in existing:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        for name in OWNED_OUTPUTS:
            (staging / name).rename(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "LTCC_ReID"


def _write(spec: SynthSpec, root: Path, progress: bool) -> None:
    ltcc, parsing = root / "LTCC_ReID", root / "parsing"
    for split in ("train", "query", "test"):
        (ltcc / split).mkdir(parents=True)
        (parsing / split).mkdir(parents=True)
    (ltcc / "info").mkdir()
    palette = voc_palette()
    bodies = {pid: _body(spec.seed, pid) for pid in range(spec.identities)}
    outfits = {
        pid: _shaded(spec.seed, pid, _outfits(spec.seed, pid, spec.outfits, spec.keep_lower), spec.shade)
        for pid in range(spec.identities)
    }
    cameras = {cam: _camera(spec.seed, cam, spec.camera_strength) for cam in range(spec.cameras)}
    split = _assign_split(spec)
    frame = 0
    for (pid, outfit, cam, index), subset in tqdm(
        sorted(split.items()), desc="synth", unit="img", disable=not progress or None
    ):
        frame += 1
        rng = _stream(spec.seed, 5, pid, outfit, cam, index)
        image, labels = render(bodies[pid], outfits[pid][outfit], cameras[cam], spec.height, spec.width, rng)
        stem = f"{pid:03d}_{outfit + 1}_c{cam + 1}_{frame:06d}"
        Image.fromarray(image, "RGB").save(ltcc / subset / f"{stem}.png")
        parsing_png = Image.fromarray(labels, "P")
        parsing_png.putpalette(palette)
        parsing_png.save(parsing / subset / f"{stem}.png")

    train_ids = range(spec.identities // 2)
    test_ids = range(spec.identities // 2, spec.identities)
    changing = spec.outfits > 1
    for name, ids in (("train", train_ids), ("test", test_ids)):
        lines = "".join(f"{pid}\n" for pid in ids)
        (ltcc / "info" / f"cloth-change_id_{name}.txt").write_text(lines if changing else "")
        (ltcc / "info" / f"cloth-unchange_id_{name}.txt").write_text("" if changing else lines)
    meta = {
        "spec": asdict(spec),
        "format": "LTCC naming PPP_O_cCC_FFFFFF.png; outfit and camera 1-based in names",
        "bodies": {str(pid): asdict(body) for pid, body in bodies.items()},
        "outfits": {str(pid): [asdict(o) for o in outfits[pid]] for pid in outfits},
        "cameras": {str(cam): asdict(c) for cam, c in cameras.items()},
    }
    (root / "synthetic.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
