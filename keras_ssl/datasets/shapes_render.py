"""The renderer behind `synthetic_shapes`: pure numpy, no TensorFlow.

Draws one of twelve 2-D shapes with the nuisance factors Texture, Colour,
Viewpoint and Lighting switched on or off (see `keras_ssl.datasets.synthetic_shapes`
for what each factor does). Every example comes from
`np.random.default_rng([seed, split_id, index])` and draws the same random
numbers whatever the factors, so configs differing in one factor differ only
in that nuisance.

Example:
    >>> image, pose, mask = render_example(0, label=2, factors="TCVL", image_size=32)
    >>> image.shape, mask.shape
    ((32, 32, 3), (32, 32, 1))
"""

import collections
import functools
import itertools

import numpy as np

CLASS_NAMES = (
    "triangle",
    "arrow",
    "heart",
    "house",
    "crescent",
    "t_shape",
    "l_shape",
    "star",
    "semicircle",
    "square",
    "circle",
    "cross",
)
FACTOR_LETTERS = "TCVL"
FACTOR_STRINGS = tuple(
    "".join(letter if on else "-" for letter, on in zip(FACTOR_LETTERS, bits))
    for bits in itertools.product((True, False), repeat=4)
)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 256
SPLIT_IDS = {"train": 0, "test": 1}

Factors = collections.namedtuple("Factors", ["texture", "color", "viewpoint", "lighting"])

_SUPERSAMPLE = 4
_CANONICAL_SCALE = 0.75
# Fixed colours for "C off", and the luminance ranges for "C on": the light region's darkest
# texture tone stays above the dark region's lightest, so the shape never dissolves.
_GREY_LIGHT, _GREY_DARK = 0.9, 0.45
_LIGHT_RANGE, _DARK_RANGE = (0.68, 0.92), (0.12, 0.35)
_LIGHT_SECONDARY, _DARK_SECONDARY = 0.72, 0.55
_NOISE_GRID = 5


def parse_factors(factors):
    """Parses a factor string such as "TCVL" or "-C-L".

    Args:
      factors: four characters in the order T (texture), C (colour), V (viewpoint),
        L (lighting); the letter switches the factor on, "-" switches it off. A `Factors`
        tuple is passed through.

    Returns:
      A `Factors(texture, color, viewpoint, lighting)` namedtuple of bools.

    Raises:
      ValueError: if `factors` is not such a string.

    Example:
      >>> parse_factors("T--L")
      Factors(texture=True, color=False, viewpoint=False, lighting=True)
    """
    if isinstance(factors, Factors):
        return factors
    ok = (
        isinstance(factors, str)
        and len(factors) == 4
        and all(ch in (letter, "-") for ch, letter in zip(factors, FACTOR_LETTERS))
    )
    if not ok:
        raise ValueError(
            f"Bad factor string {factors!r}: expected 4 characters in the order T, C, V, L, "
            "each the letter (factor on) or '-' (off), e.g. 'TCVL', '-C-L' or '----'."
        )
    return Factors(*(ch != "-" for ch in factors))


def _check_image_size(image_size):
    if (
        not isinstance(image_size, (int, np.integer))
        or isinstance(image_size, bool)
        or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE
    ):
        raise ValueError(
            f"image_size must be an integer in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {image_size!r}."
        )
    return int(image_size)


# Shapes live in object coordinates with y pointing up and fit inside the unit circle, so
# a scale s (radius in canvas units, the canvas spanning [-1, 1]) keeps them in frame.
def _polygon(vertices):
    """Returns an even-odd point-in-polygon test, vectorised over points."""
    edges = []
    for (x1, y1), (x2, y2) in zip(vertices, vertices[1:] + vertices[:1]):
        if y1 != y2:  # Horizontal edges never cross a horizontal ray.
            edges.append((x1, y1, y2, (x2 - x1) / (y2 - y1)))

    def inside(x, y):
        result = np.zeros(x.shape, bool)
        for x1, y1, y2, slope in edges:
            straddles = (y1 > y) != (y2 > y)
            result ^= straddles & (x < x1 + (y - y1) * slope)
        return result

    return inside


def _star_vertices(points=5, outer=0.95, inner=0.4):
    angles = np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return [(float(r * np.cos(a)), float(r * np.sin(a))) for r, a in zip(radii, angles)]


def _heart(x, y):
    hx2, hy = (x / 0.75) ** 2, y / 0.75 + 0.1
    r = hx2 + hy * hy - 1
    return r * r * r <= hx2 * hy * hy * hy  # Products: float `** 3` is several times slower.


_SHAPES = (
    _polygon([(0, 0.9), (-0.8, -0.55), (0.8, -0.55)]),
    _polygon([(0, 0.95), (-0.6, 0.3), (-0.22, 0.3), (-0.22, -0.9), (0.22, -0.9), (0.22, 0.3), (0.6, 0.3)]),
    _heart,
    _polygon([(-0.6, -0.75), (0.6, -0.75), (0.6, 0.15), (0.8, 0.15), (0, 0.85), (-0.8, 0.15), (-0.6, 0.15)]),
    lambda x, y: (x * x + y * y <= 0.85**2) & (x * x + (y - 0.4) ** 2 >= 0.75**2),
    _polygon(
        [
            (-0.75, 0.6),
            (0.75, 0.6),
            (0.75, 0.25),
            (0.2, 0.25),
            (0.2, -0.85),
            (-0.2, -0.85),
            (-0.2, 0.25),
            (-0.75, 0.25),
        ]
    ),
    _polygon([(-0.5, 0.8), (-0.1, 0.8), (-0.1, -0.35), (0.6, -0.35), (0.6, -0.75), (-0.5, -0.75)]),
    _polygon(_star_vertices()),
    lambda x, y: (x * x + (y + 0.4) ** 2 <= 0.9**2) & (y >= -0.4),
    _polygon([(-0.65, -0.65), (0.65, -0.65), (0.65, 0.65), (-0.65, 0.65)]),
    lambda x, y: x * x + y * y <= 0.8**2,
    _polygon(
        [
            (-0.22, 0.85),
            (0.22, 0.85),
            (0.22, 0.22),
            (0.85, 0.22),
            (0.85, -0.22),
            (0.22, -0.22),
            (0.22, -0.85),
            (-0.22, -0.85),
            (-0.22, -0.22),
            (-0.85, -0.22),
            (-0.85, 0.22),
            (-0.22, 0.22),
        ]
    ),
)
assert len(_SHAPES) == len(CLASS_NAMES)


@functools.lru_cache(maxsize=8)
def _canvas_grid(size):
    """Canvas coordinates (x right, y up, in [-1, 1]) of the centres of a size x size grid."""
    centres = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(centres, -centres)
    return x, y


def _hsv_to_rgb(h, s, v):
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


_LUMA = np.array([0.299, 0.587, 0.114])


def _with_luminance(rgb, target):
    """Moves `rgb` to luminance `target`, keeping its hue: hue alone says little about
    brightness (saturated blue is dark, yellow light), and contrast must be guaranteed."""
    luma = float(rgb @ _LUMA)
    if luma > target:
        return rgb * (target / luma)
    return rgb + (1 - rgb) * ((target - luma) / (1 - luma))


def _draw_colours(rng):
    """Draws (primary, secondary) RGB colours for shape and background."""
    hues, sats = rng.random(2), rng.uniform(0.35, 0.9, 2)
    light_y, dark_y = rng.uniform(*_LIGHT_RANGE), rng.uniform(*_DARK_RANGE)
    shape_is_light = rng.random() < 0.5
    light = _with_luminance(_hsv_to_rgb(hues[0], sats[0], 1.0), light_y)
    dark = _with_luminance(_hsv_to_rgb(hues[1], sats[1], 1.0), dark_y)
    pairs = [(light, light * _LIGHT_SECONDARY), (dark, dark * _DARK_SECONDARY)]
    return pairs if shape_is_light else pairs[::-1]


def _draw_texture(rng):
    """Draws the parameters of one procedural texture; always the same number of draws."""
    return dict(
        kind=int(rng.integers(3)),
        freq=rng.uniform(1.0, 3.0),
        theta=rng.uniform(0, np.pi),
        phase=rng.uniform(0, 2 * np.pi),
        cell=rng.uniform(0.2, 0.45),
        grid=rng.random((_NOISE_GRID, _NOISE_GRID)),
    )


def _texture(params, x, y):
    """Evaluates a texture at points (x, y), giving a pattern in [0, 1]."""
    c, s = np.cos(params["theta"]), np.sin(params["theta"])
    a, b = c * x + s * y, -s * x + c * y
    if params["kind"] == 0:  # Stripes.
        return 0.5 + 0.5 * np.sin(2 * np.pi * params["freq"] * a + params["phase"])
    if params["kind"] == 1:  # Checkers, with soft edges so small images do not alias.
        wave = np.sin(np.pi * a / params["cell"]) * np.sin(np.pi * b / params["cell"])
        return 0.5 + 0.5 * np.tanh(4 * wave)
    grid = params["grid"]  # Smooth noise: bilinear interpolation of a coarse random grid.
    n = grid.shape[0] - 1
    gx = np.clip((x + 1.2) / 2.4 * n, 0, n - 1e-6)
    gy = np.clip((y + 1.2) / 2.4 * n, 0, n - 1e-6)
    ix, iy = gx.astype(int), gy.astype(int)
    fx, fy = gx - ix, gy - iy
    value = (
        grid[iy, ix] * (1 - fx) * (1 - fy)
        + grid[iy, ix + 1] * fx * (1 - fy)
        + grid[iy + 1, ix] * (1 - fx) * fy
        + grid[iy + 1, ix + 1] * fx * fy
    )
    return (value - grid.min()) / max(grid.max() - grid.min(), 1e-6)


def render_example(rng_or_seed, label, factors, image_size=32):
    """Renders one antialiased example.

    Args:
      rng_or_seed: a `np.random.Generator`, or anything `np.random.default_rng` accepts
        (an int, a list of ints).
      label: class index in `[0, len(CLASS_NAMES))`.
      factors: a factor string such as "TCVL" (see `parse_factors`) or a `Factors` tuple.
      image_size: side S of the square image, in [16, 256].

    Returns:
      `(image, pose, mask)`: uint8 image [S, S, 3]; the in-plane rotation in degrees
      (counter-clockwise, 0.0 when viewpoint is off); uint8 mask [S, S, 1] that is
      `label + 1` where the shape covers at least half a pixel and 0 elsewhere.

    Example:
      >>> image, pose, mask = render_example(0, CLASS_NAMES.index("arrow"), "--V-")
      >>> image.shape, mask.shape
      ((32, 32, 3), (32, 32, 1))
    """
    factors = parse_factors(factors)
    size = _check_image_size(image_size)
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"label must be in [0, {len(CLASS_NAMES)}), got {label!r}.")
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    # Draw everything in a fixed order, whether or not the factor uses it (see module doc).
    colours = _draw_colours(rng)
    textures = [_draw_texture(rng), _draw_texture(rng)]
    angle, scale = rng.uniform(-45, 45), rng.uniform(0.55, 0.95)
    shift = rng.uniform(-1, 1, 2)
    light_dir, ambient, strength = rng.uniform(-60, 60), rng.uniform(0.3, 0.6), rng.uniform(0.4, 0.8)

    if not factors.viewpoint:
        angle, scale, shift = 0.0, _CANONICAL_SCALE, np.zeros(2)
    shift = shift * (1 - scale)  # The shape's bounding circle stays inside the canvas.
    cos, sin = np.cos(np.radians(angle)), np.sin(np.radians(angle))

    def to_object(x, y):
        dx, dy = x - shift[0], y - shift[1]
        return (cos * dx + sin * dy) / scale, (-sin * dx + cos * dy) / scale

    fine = size * _SUPERSAMPLE
    inside = _SHAPES[label](*to_object(*_canvas_grid(fine)))
    coverage = inside.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(axis=(1, 3))

    x, y = _canvas_grid(size)
    if not factors.color:
        colours = [
            (np.full(3, _GREY_LIGHT), np.full(3, _GREY_LIGHT * _LIGHT_SECONDARY)),
            (np.full(3, _GREY_DARK), np.full(3, _GREY_DARK * _DARK_SECONDARY)),
        ]
    fills = []
    # The shape's texture is painted on the object (it turns with it); the background's is not.
    for (primary, secondary), params, coords in zip(colours, textures, (to_object(x, y), (x, y))):
        if factors.texture:
            pattern = _texture(params, *coords)[..., None]
            fills.append(primary * (1 - pattern) + secondary * pattern)
        else:
            fills.append(np.broadcast_to(primary, (size, size, 3)))
    image = coverage[..., None] * fills[0] + (1 - coverage[..., None]) * fills[1]

    if factors.lighting:
        phi = np.radians(light_dir)
        along = (np.sin(phi) * x + np.cos(phi) * y) / np.sqrt(2)  # In [-1, 1], 1 toward light.
        image = image * (ambient + strength * (0.5 + 0.5 * along))[..., None]

    image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    mask = ((coverage >= 0.5) * (label + 1)).astype(np.uint8)[..., None]
    return image, float(angle), mask


def example_rng(seed, split, index):
    """Returns the generator that renders example `index` of `split` ("train" or "test")."""
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


def example_label(index):
    """Returns the class of example `index`: cycling through classes keeps splits balanced."""
    return index % len(CLASS_NAMES)


def render_split(factors="TCVL", image_size=32, num_examples=100, seed=0, split="train"):
    """Renders examples `0..num_examples-1` of a split as numpy arrays, without TFDS.

    Args:
      factors: factor string, see `parse_factors`.
      image_size: side of the images, in [16, 256].
      num_examples: how many examples to render.
      seed: dataset seed.
      split: "train" or "test".

    Returns:
      A dict of arrays: "image" uint8 [N, S, S, 3], "label" int64 [N], "pose" float32 [N],
      "segmentation_mask" uint8 [N, S, S, 1] and "index" int64 [N]; example i is identical
      to example i of the TFDS split with the same factors, size and seed.

    Example:
      >>> render_split("----", 16, num_examples=12)["image"].shape
      (12, 16, 16, 3)
    """
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}.")
    factors = parse_factors(factors)
    labels = np.array([example_label(i) for i in range(num_examples)], np.int64)
    rendered = [
        render_example(example_rng(seed, split, i), int(label), factors, image_size)
        for i, label in enumerate(labels)
    ]
    size = _check_image_size(image_size)
    return {
        "image": np.array([r[0] for r in rendered], np.uint8).reshape(-1, size, size, 3),
        "label": labels,
        "pose": np.array([r[1] for r in rendered], np.float32),
        "segmentation_mask": np.array([r[2] for r in rendered], np.uint8).reshape(-1, size, size, 1),
        "index": np.arange(num_examples, dtype=np.int64),
    }
