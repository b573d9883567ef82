"""What a scene is: the renderer's settings, one object's shape and placement, and each scene's random stream."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ConfigError

F32 = np.float32
INF = float("inf")
MATERIALS = ("rubber", "metal")
SIZES = ("large", "small")

# Random streams: each scene's generator is SeedSequence(seed, spawn_key=(stream, ...)), independent of workers.
S_LABELS, S_RENDER, S_TESTS, S_GT, S_BINDING = 1, 2, 3, 4, 5


@dataclass
class SynthConfig:
    """Scene sampling, camera, lights and quality settings of the renderer."""

    size: int = 64                      # output image side (px)
    supersample: int = 3                # rays per pixel side on objects (the floor is smooth: 1 ray/px)
    arena: float = 2.6                  # objects' centres lie in [-arena, arena]² on the floor
    radius_large: float = 0.76          # nominal object radius (world units) of the two sizes
    radius_small: float = 0.50
    gap: float = 0.12                   # minimum clearance between object footprints
    min_visible_px: float = 40.0        # each object keeps this many visible pixels at 64×64 (scaled with size²)
    min_visible_frac: float = 0.65      # ... and this fraction of its unoccluded area
    margin_px: float = 1.0              # objects stay this far inside the frame (at 64×64)
    fov_deg: float = 34.0               # vertical = horizontal field of view
    elevation_deg: float = 36.0         # camera looks down at this angle ...
    elevation_jitter: float = 3.0       # ... ± this
    azimuth_deg: float = -40.0
    azimuth_jitter: float = 8.0
    distance: float = 10.6              # camera distance to the look-at point, ± distance_jitter
    distance_jitter: float = 0.35
    target_jitter: float = 0.2
    light_elevation_deg: float = 52.0   # key light (casts shadows), ± light_jitter_deg in elevation and azimuth
    light_azimuth_deg: float = 35.0     # relative to the camera's azimuth
    light_jitter_deg: float = 8.0
    max_attempts: int = 60              # placements tried per object before the scene restarts
    # Added after the default renders' fingerprint was fixed: `record()` lists them only when they differ from
    # these defaults, which render exactly as before.
    width: int = 0                      # image width (px) when not square: `size` is then the height
    rgba: bool = False                  # write RGBA PNGs (alpha opaque), as the course's files are
    key_rgb: tuple[float, float, float] = (1.0, 1.0, 1.0)  # key light's colour (a gain per linear channel)
    key_power: float = 1.05             # key light's strength, ± 0.08 per scene
    ambient: float = 0.30               # ambient light, ± 0.03 per scene
    metal_share: float = 0.5            # chance that an object is metal (else rubber)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the images in pixels."""
        return self.size, self.width or self.size

    def record(self) -> dict:
        """The settings as .synth.json records them (JSON types); the later fields only when set."""
        base = SynthConfig()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
                if k not in LATER_FIELDS or v != getattr(base, k)}

    def check(self) -> None:
        """Raise ConfigError for values the renderer cannot use."""
        if not isinstance(self.size, int) or self.size < 16:
            raise ConfigError(f"size {self.size!r}: images must be at least 16 px wide (e.g. 64)")
        if self.size > 1024:
            raise ConfigError(f"size {self.size}: at most 1024 px is supported")
        if isinstance(self.width, bool) or not isinstance(self.width, int) or not (self.width == 0 or 16 <= self.width <= 1024):
            raise ConfigError(f"width {self.width!r}: use 0 (square) or 16 to 1024 px")
        if not isinstance(self.supersample, int) or not 1 <= self.supersample <= 8:
            raise ConfigError(f"supersample {self.supersample!r}: use an integer from 1 to 8")
        if not (isinstance(self.key_rgb, (tuple, list)) and len(self.key_rgb) == 3
                and all(isinstance(g, (int, float)) and 0 < g <= 2 for g in self.key_rgb)):
            raise ConfigError(f"key_rgb {self.key_rgb!r}: use three gains in (0, 2], e.g. (1.0, 0.85, 0.65)")
        for name, low, high in (("key_power", 0.2, 2.0), ("ambient", 0.05, 1.0), ("metal_share", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
                raise ConfigError(f"{name} {v!r}: use a number from {low:g} to {high:g}")


# fields that .synth.json records only when set: the default renders keep their fingerprint
LATER_FIELDS = ("width", "rgba", "key_rgb", "key_power", "ambient", "metal_share")

# Named looks: settings over the defaults. "second" stands in for images that look unlike the default renders
# (as the course's do): a warmer, dimmer key light from the other side and lower, a camera 8 degrees higher,
# objects 15 % larger and seven in ten of them metal. The eight colours stay apart for a person.
LOOKS: dict[str, dict] = {
    "default": {},
    "second": {"elevation_deg": 44.0, "light_azimuth_deg": -55.0, "light_elevation_deg": 40.0,
               "key_rgb": (1.0, 0.86, 0.68), "key_power": 0.92, "ambient": 0.26,
               "radius_large": 0.874, "radius_small": 0.575, "metal_share": 0.7},
}


def look_config(look: str = "default", **settings) -> SynthConfig:
    """The settings of a named look (LOOKS) with `settings` (e.g. size=64) on top, checked."""
    if not isinstance(look, str) or look not in LOOKS:
        raise ConfigError(f"--look {look!r}: use one of {', '.join(LOOKS)}")
    cfg = SynthConfig(**{**LOOKS[look], **settings})
    cfg.check()
    return cfg


# ---------------------------------------------------------------- scene description
@dataclass
class SceneObject:
    """One object: label, material, size and placement (centre x, y on the floor; rotation theta about z)."""

    colour: str
    shape: str
    material: str
    size: str
    radius: float
    x: float
    y: float
    theta: float

    @property
    def name(self) -> str:
        """The label, e.g. 'red sphere'."""
        return f"{self.colour} {self.shape}"

    @property
    def half(self) -> tuple[float, float]:
        """(horizontal half-extent, vertical half-height) of the shape."""
        r = self.radius
        if self.shape == "sphere":
            return r, r
        if self.shape == "cube":
            return 0.8 * r, 0.8 * r
        return 0.82 * r, 0.82 * r  # cylinder: radius, half height

    @property
    def zc(self) -> float:
        """Height of the centre (objects rest on the floor)."""
        return self.half[1]

    @property
    def bound_radius(self) -> float:
        """Radius of a sphere around the centre that holds the whole object."""
        a, h = self.half
        return a if self.shape == "sphere" else (math.sqrt(3) * a if self.shape == "cube" else math.hypot(a, h))

    @property
    def footprint(self) -> float:
        """Radius of a vertical cylinder around the centre that holds the object (for non-intersection)."""
        a, _ = self.half
        return math.sqrt(2) * a if self.shape == "cube" else a


def scene_rng(seed: int, *key: int) -> np.random.Generator:
    """The random generator of one scene, from (seed, stream, index...) alone."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(int(k) for k in key)))
