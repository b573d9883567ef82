"""The renderer's camera and lights: a jittered pinhole camera looking down at the arena, its ray grid, and
where an object lands on screen."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .scene import F32, SceneObject, SynthConfig


@dataclass
class Camera:
    """Pinhole camera: position, orthonormal right/up/forward axes, vertical half-angle tangent, width / height."""

    pos: tuple[float, float, float]
    right: tuple[float, float, float]
    up: tuple[float, float, float]
    fwd: tuple[float, float, float]
    tan_half: float
    aspect: float = 1.0

    def project(self, p) -> tuple[float, float, float]:
        """World point -> (column, row) as fractions of the image's width and height, and depth."""
        v = (p[0] - self.pos[0], p[1] - self.pos[1], p[2] - self.pos[2])
        xc, yc, zc = (dot3(v, self.right), dot3(v, self.up), dot3(v, self.fwd))
        return (xc / (zc * self.tan_half * self.aspect) + 1) / 2, (1 - yc / (zc * self.tan_half)) / 2, zc


@dataclass
class Lights:
    """Key light (direction towards it, casts shadows), fill light and ambient term."""

    key: tuple[float, float, float]
    fill: tuple[float, float, float]
    key_power: float
    fill_power: float
    ambient: float


def dot3(a, b) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _unit(v) -> tuple[float, float, float]:
    n = math.sqrt(dot3(v, v))
    return (v[0] / n, v[1] / n, v[2] / n)


def _cross(a, b) -> tuple[float, float, float]:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _sph(az_deg: float, el_deg: float) -> tuple[float, float, float]:
    az, el = math.radians(az_deg), math.radians(el_deg)
    return (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))


def sample_camera(rng: np.random.Generator, cfg: SynthConfig) -> Camera:
    """A camera looking down at the arena, with jitter in azimuth, elevation, distance and target."""
    az = cfg.azimuth_deg + rng.uniform(-1, 1) * cfg.azimuth_jitter
    el = cfg.elevation_deg + rng.uniform(-1, 1) * cfg.elevation_jitter
    dist = cfg.distance + rng.uniform(-1, 1) * cfg.distance_jitter
    tx, ty = rng.uniform(-1, 1, 2) * cfg.target_jitter
    target = (float(tx), float(ty), 0.3)
    d = _sph(az, el)
    pos = (target[0] + dist * d[0], target[1] + dist * d[1], target[2] + dist * d[2])
    fwd = _unit((target[0] - pos[0], target[1] - pos[1], target[2] - pos[2]))
    right = _unit(_cross(fwd, (0.0, 0.0, 1.0)))
    up = _cross(right, fwd)
    height, width = cfg.shape
    return Camera(pos, right, up, fwd, math.tan(math.radians(cfg.fov_deg) / 2), width / height)


def sample_lights(rng: np.random.Generator, cfg: SynthConfig, camera: Camera) -> Lights:
    """Key light from the camera's side (shadows fall away from the viewer), a weaker fill from the other side."""
    cam_az = math.degrees(math.atan2(camera.pos[1], camera.pos[0]))
    j = rng.uniform(-1, 1, 4) * cfg.light_jitter_deg
    key = _sph(cam_az + cfg.light_azimuth_deg + j[0], cfg.light_elevation_deg + j[1])
    fill = _sph(cam_az - 80 + j[2], 30 + 0.5 * j[3])
    return Lights(key, fill, key_power=float(cfg.key_power + rng.uniform(-0.08, 0.08)), fill_power=0.32,
                  ambient=float(cfg.ambient + rng.uniform(-0.03, 0.03)))


_GRIDS: dict[tuple[int, int, float], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def camera_grid(n: int, tan_half: float, w: int | None = None):
    """Unit ray directions in camera space (right, up, forward components) for an n×w grid of pixel centres
    (w = n: square), pixels square in angle."""
    w = n if w is None else w
    key = (n, w, tan_half)
    if key not in _GRIDS:
        v = ((np.arange(n, dtype=np.float64) + 0.5) / n * 2 - 1) * tan_half
        u = v if w == n else ((np.arange(w, dtype=np.float64) + 0.5) / w * 2 - 1) * tan_half * (w / n)
        X, Y = np.meshgrid(u, -v)
        inv = 1 / np.sqrt(X * X + Y * Y + 1)
        _GRIDS[key] = ((X * inv).astype(F32), (Y * inv).astype(F32), inv.astype(F32))
        if len(_GRIDS) > 16:
            _GRIDS.pop(next(iter(_GRIDS)))
    return _GRIDS[key]


def world_dirs(cam: Camera, grid, sl=(slice(None), slice(None))):
    """World-space ray directions (3 arrays) for a slice of a camera grid."""
    gx, gy, gz = (g[sl] for g in grid)
    r, u, f = cam.right, cam.up, cam.fwd
    return (gx * r[0] + gy * u[0] + gz * f[0], gx * r[1] + gy * u[1] + gz * f[1], gx * r[2] + gy * u[2] + gz * f[2])


def screen_rect(ob: SceneObject, cam: Camera, n: int, s: int, w: int | None = None) -> tuple[int, int, int, int] | None:
    """Pixel-aligned screen rectangle (rows, cols in the supersampled n·s × w·s grid; w = n: square) holding `ob`;
    None if off-frame."""
    w = n if w is None else w
    R = ob.bound_radius
    cols, rows = [], []
    for dx, dy, dz in itertools.product((-R, R), repeat=3):
        c, r, depth = cam.project((ob.x + dx, ob.y + dy, ob.zc + dz))
        if depth <= 0.1:
            return None
        cols.append(c * w)
        rows.append(r * n)
    r0, r1 = max(int(math.floor(min(rows))), 0), min(int(math.ceil(max(rows))), n)
    c0, c1 = max(int(math.floor(min(cols))), 0), min(int(math.ceil(max(cols))), w)
    if r1 <= r0 or c1 <= c0:
        return None
    return r0 * s, r1 * s, c0 * s, c1 * s


def in_frame(ob: SceneObject, cam: Camera, n: int, margin_px: float, w: int | None = None) -> bool:
    """True when the object's silhouette (its bounding sphere's outline) lies inside the n×w frame (w = n: square)."""
    c, r, depth = cam.project((ob.x, ob.y, ob.zc))
    if depth <= 1.0:
        return False
    # the bounding sphere's outline is within angular radius asin(R / depth) of its centre
    rad = math.tan(math.asin(min(ob.bound_radius / depth, 0.99))) / cam.tan_half / 2
    m = margin_px / n
    if w is None or w == n:
        return (m + rad <= c <= 1 - m - rad) and (m + rad <= r <= 1 - m - rad)
    mc, radc = margin_px / w, rad / cam.aspect  # as fractions of the width
    return (mc + radc <= c <= 1 - mc - radc) and (m + rad <= r <= 1 - m - rad)
