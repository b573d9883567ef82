"""What a scene is: the renderer's settings, one object's shape and placement, and each scene's random stream."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

F32 = np.float32
INF = float("inf")
MATERIALS = ("rubber", "metal")
SIZES = ("large", "small")

# Random streams: each scene's generator is SeedSequence(seed, spawn_key=(stream, ...)), independent of workers.
S_LABELS, S_RENDER, S_TESTS, S_GT = 1, 2, 3, 4


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

    def check(self) -> None:
        """Raise ConfigError for values the renderer cannot use."""
        if not isinstance(self.size, int) or self.size < 16:
            raise ConfigError(f"size {self.size!r}: images must be at least 16 px wide (e.g. 64)")
        if self.size > 1024:
            raise ConfigError(f"size {self.size}: at most 1024 px is supported")
        if not isinstance(self.supersample, int) or not 1 <= self.supersample <= 8:
            raise ConfigError(f"supersample {self.supersample!r}: use an integer from 1 to 8")


# ---------------------------------------------------------------- scene description
@dataclass
class SceneObject:
    """One object: label, material, size and placement (centre x, y on the floor; rotation theta about z)."""

    color: str
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
        return f"{self.color} {self.shape}"

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
