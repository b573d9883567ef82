"""Synthetic CLEVR-style scenes: a pure-numpy ray caster and a dataset writer in the iCLEVR layout.

The renderer casts one ray per output pixel for the gray ground plane (smooth, so no supersampling needed)
and `supersample`² rays per pixel inside each object's screen rectangle (anti-aliased silhouettes).
Vectors are kept as separate x/y/z float32 arrays and only element-wise IEEE operations (+, *, /, sqrt,
min, max) touch pixels, so a scene's bytes do not depend on the CPU's SIMD flavour or the worker count.
A scene is built one object at a time, as in iCLEVR: the image after each addition is kept, and all of a
scene's images share one camera, one light rig and the per-object ray hits.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import labels as L
from .errors import ConfigError, DataError, LabelError
from .io import check_writable_dir, ensure_writable_dir, write_bytes, write_json

RENDER_VERSION = 1  # bump when the renderer's output changes; a folder rendered by another version is refused
F32 = np.float32
INF = float("inf")

# CLEVR's palette (sRGB 0-255).
PALETTE: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20),
    "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51),
}
_ALBEDO = {c: tuple((v / 255.0) ** 2.2 for v in rgb) for c, rgb in PALETTE.items()}  # linear RGB
MATERIALS = ("rubber", "metal")
SIZES = ("large", "small")
TEST_SPLITS = ("test", "new_test", "unseen_test")
TEST_SETS = 32

# Random streams: each scene's generator is SeedSequence(seed, spawn_key=(stream, ...)), independent of workers.
_S_LABELS, _S_RENDER, _S_TESTS, _S_GT = 1, 2, 3, 4
_COURSE_NAME = re.compile(r"^(?P<scene>.+)_(?P<step>\d+)\.png$")


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


@dataclass
class Camera:
    """Pinhole camera: position and orthonormal right/up/forward axes; square image."""

    pos: tuple[float, float, float]
    right: tuple[float, float, float]
    up: tuple[float, float, float]
    fwd: tuple[float, float, float]
    tan_half: float

    def project(self, p) -> tuple[float, float, float]:
        """World point -> (column, row) in output-pixel units of a 1×1 image, and depth."""
        v = (p[0] - self.pos[0], p[1] - self.pos[1], p[2] - self.pos[2])
        xc, yc, zc = (_dot3(v, self.right), _dot3(v, self.up), _dot3(v, self.fwd))
        return (xc / (zc * self.tan_half) + 1) / 2, (1 - yc / (zc * self.tan_half)) / 2, zc


@dataclass
class Lights:
    """Key light (direction towards it, casts shadows), fill light and ambient term."""

    key: tuple[float, float, float]
    fill: tuple[float, float, float]
    key_power: float
    fill_power: float
    ambient: float


def _dot3(a, b) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _unit(v) -> tuple[float, float, float]:
    n = math.sqrt(_dot3(v, v))
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
    return Camera(pos, right, up, fwd, math.tan(math.radians(cfg.fov_deg) / 2))


def sample_lights(rng: np.random.Generator, cfg: SynthConfig, camera: Camera) -> Lights:
    """Key light from the camera's side (shadows fall away from the viewer), a weaker fill from the other side."""
    cam_az = math.degrees(math.atan2(camera.pos[1], camera.pos[0]))
    j = rng.uniform(-1, 1, 4) * cfg.light_jitter_deg
    key = _sph(cam_az + cfg.light_azimuth_deg + j[0], cfg.light_elevation_deg + j[1])
    fill = _sph(cam_az - 80 + j[2], 30 + 0.5 * j[3])
    return Lights(key, fill, key_power=float(1.05 + rng.uniform(-0.08, 0.08)), fill_power=0.32,
                  ambient=float(0.30 + rng.uniform(-0.03, 0.03)))


# ---------------------------------------------------------------- ray casting (element-wise, structure of arrays)
def _interval(ob: SceneObject, ox, oy, oz, dx, dy, dz):
    """Entry and exit distances of rays o + t·d (unit d) through `ob`, and a signed clearance (< 0: hit).

    Origins or directions may be scalars; misses have t_near >= t_far. The clearance is about how far the
    ray passes outside the object (world units) and drives soft shadow edges.
    """
    X, Y, Z = ox - ob.x, oy - ob.y, oz - ob.zc
    a, h = ob.half
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if ob.shape == "sphere":
            b = X * dx + Y * dy + Z * dz
            disc = b * b - (X * X + Y * Y + Z * Z - a * a)
            sq = np.sqrt(np.maximum(disc, 0))
            clr = np.sqrt(np.maximum(a * a - disc, 0)) - a
            return -b - sq, -b + sq, clr
        if ob.shape == "cube":
            c, s = math.cos(ob.theta), math.sin(ob.theta)
            lx, ly = X * c + Y * s, Y * c - X * s
            ldx, ldy = dx * c + dy * s, dy * c - dx * s
            near, far = None, None
            for lo, ld in ((lx, ldx), (ly, ldy), (Z, dz)):
                inv = _inv(ld)
                t1, t2 = (-a - lo) * inv, (a - lo) * inv
                n, f = np.minimum(t1, t2), np.maximum(t1, t2)
                near = n if near is None else np.maximum(near, n)
                far = f if far is None else np.minimum(far, f)
            return near, far, 0.5 * (near - far)
        # cylinder about the vertical axis
        a2 = dx * dx + dy * dy
        a2 = np.maximum(a2, 1e-12) if isinstance(a2, np.ndarray) else max(a2, 1e-12)
        b = X * dx + Y * dy
        disc = b * b - a2 * (X * X + Y * Y - a * a)
        sq = np.sqrt(np.maximum(disc, 0))
        inv_a = 1.0 / a2
        s0, s1 = (-b - sq) * inv_a, (-b + sq) * inv_a
        invz = _inv(dz)
        z0, z1 = (-h - Z) * invz, (h - Z) * invz
        near = np.maximum(s0, np.minimum(z0, z1))
        far = np.minimum(s1, np.maximum(z0, z1))
        d_perp = np.abs(X * dy - Y * dx) * (np.sqrt(inv_a) if isinstance(inv_a, np.ndarray) else math.sqrt(inv_a))
        return near, far, np.maximum(d_perp - a, 0.5 * (near - far))


def _inv(d):
    """1/d for a scalar or array; a zero scalar becomes a huge number (the ray is parallel to a slab)."""
    if isinstance(d, np.ndarray):
        return 1.0 / d
    return 1.0 / d if d != 0 else 1e30


def _normal(ob: SceneObject, px, py, pz):
    """Outward unit normal of `ob` at surface points p (arrays)."""
    X, Y, Z = px - ob.x, py - ob.y, pz - ob.zc
    a, h = ob.half
    if ob.shape == "sphere":
        inv = 1.0 / a
        return X * inv, Y * inv, Z * inv
    if ob.shape == "cube":
        c, s = math.cos(ob.theta), math.sin(ob.theta)
        lx, ly = X * c + Y * s, Y * c - X * s
        ax, ay, az = np.abs(lx), np.abs(ly), np.abs(Z)
        mx = (ax >= ay) & (ax >= az)
        my = (ay > ax) & (ay >= az)
        mz = ~(mx | my)
        nx, ny, nz = np.sign(lx) * mx, np.sign(ly) * my, (np.sign(Z) * mz).astype(F32)
        return (nx * c - ny * s).astype(F32), (nx * s + ny * c).astype(F32), nz
    rad = np.sqrt(X * X + Y * Y)
    side = rad * (1.0 / a) >= np.abs(Z) * (1.0 / h)
    inv = np.where(side, 1.0 / np.maximum(rad, 1e-6), 0).astype(F32)
    return X * inv, Y * inv, np.where(side, 0, np.sign(Z)).astype(F32)


def _key_visibility(ob: SceneObject, px, py, pz, key) -> np.ndarray:
    """Soft visibility (0 shadowed .. 1 lit) of the key light from points p past object `ob`."""
    near, far, clr = _interval(ob, px, py, pz, key[0], key[1], key[2])
    w = 0.05 + 0.07 * np.maximum(near, 0)  # penumbra widens with the distance to the occluder
    v = np.clip(0.5 + clr / w, 0, 1)
    v = v * v * (3 - 2 * v)
    return np.where(far > 0, v, 1).astype(F32)


_GRIDS: dict[tuple[int, float], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _camera_grid(n: int, tan_half: float):
    """Unit ray directions in camera space (right, up, forward components) for an n×n grid of pixel centres."""
    key = (n, tan_half)
    if key not in _GRIDS:
        v = ((np.arange(n, dtype=np.float64) + 0.5) / n * 2 - 1) * tan_half
        X, Y = np.meshgrid(v, -v)
        inv = 1 / np.sqrt(X * X + Y * Y + 1)
        _GRIDS[key] = ((X * inv).astype(F32), (Y * inv).astype(F32), inv.astype(F32))
        if len(_GRIDS) > 16:
            _GRIDS.pop(next(iter(_GRIDS)))
    return _GRIDS[key]


def _world_dirs(cam: Camera, grid, sl=(slice(None), slice(None))):
    """World-space ray directions (3 arrays) for a slice of a camera grid."""
    gx, gy, gz = (g[sl] for g in grid)
    r, u, f = cam.right, cam.up, cam.fwd
    return (gx * r[0] + gy * u[0] + gz * f[0], gx * r[1] + gy * u[1] + gz * f[1], gx * r[2] + gy * u[2] + gz * f[2])


class _Hits:
    """One object's primary-ray hits inside its screen rectangle (supersampled grid)."""

    def __init__(self, ob: SceneObject, rect: tuple[int, int, int, int], cam: Camera, grid):
        self.ob, self.rect = ob, rect
        i0, i1, j0, j1 = rect
        self.sl = (slice(i0, i1), slice(j0, j1))
        self.dirs = _world_dirs(cam, grid, self.sl)
        o = cam.pos
        near, far, _ = _interval(ob, o[0], o[1], o[2], *self.dirs)
        self.hit = (near < far) & (far > 0)
        self.t = np.where(self.hit, near, INF).astype(F32)
        self.count = int(self.hit.sum())


def _rect(ob: SceneObject, cam: Camera, n: int, s: int) -> tuple[int, int, int, int] | None:
    """Pixel-aligned screen rectangle (rows, cols in the n·s supersampled grid) holding `ob`; None if off-frame."""
    R = ob.bound_radius
    cols, rows = [], []
    for dx, dy, dz in itertools.product((-R, R), repeat=3):
        c, r, depth = cam.project((ob.x + dx, ob.y + dy, ob.zc + dz))
        if depth <= 0.1:
            return None
        cols.append(c * n)
        rows.append(r * n)
    r0, r1 = max(int(math.floor(min(rows))), 0), min(int(math.ceil(max(rows))), n)
    c0, c1 = max(int(math.floor(min(cols))), 0), min(int(math.ceil(max(cols))), n)
    if r1 <= r0 or c1 <= c0:
        return None
    return r0 * s, r1 * s, c0 * s, c1 * s


def _in_frame(ob: SceneObject, cam: Camera, n: int, margin_px: float) -> bool:
    """True when the object's silhouette (its bounding sphere's outline) lies inside the frame."""
    c, r, depth = cam.project((ob.x, ob.y, ob.zc))
    if depth <= 1.0:
        return False
    # the bounding sphere's outline is within angular radius asin(R / depth) of its centre
    rad = math.tan(math.asin(min(ob.bound_radius / depth, 0.99))) / cam.tan_half / 2
    m = margin_px / n
    return (m + rad <= c <= 1 - m - rad) and (m + rad <= r <= 1 - m - rad)


# ---------------------------------------------------------------- scenes
@dataclass
class SceneRender:
    """The images of a scene after each added object, and (optionally) per-object coverage at output size."""

    images: list[np.ndarray]           # uint8 (R, R, 3), image k holds objects[: k + 1]
    objects: list[SceneObject]
    coverage: list[np.ndarray] | None  # image k: float (k + 1, R, R), fraction of each pixel showing object i


_LUT = np.round(255 * (np.arange(4096) / 4095.0) ** (1 / 2.2)).astype(np.uint8)


class _SceneRenderer:
    """Renders one scene: camera, lights, floor and objects; objects are added one at a time."""

    def __init__(self, rng: np.random.Generator, cfg: SynthConfig):
        self.rng, self.cfg = rng, cfg
        self.n, self.s = cfg.size, cfg.supersample
        self.cam = sample_camera(rng, cfg)
        self.lights = sample_lights(rng, cfg, self.cam)
        self.grid = _camera_grid(self.n * self.s, self.cam.tan_half)
        self.area_scale = (self.n / 64.0) ** 2
        self.hits: list[_Hits] = []
        self.depth = np.full((self.n * self.s,) * 2, INF, F32)  # scratch z-buffer of the object layer

    # -- placement
    def _sample_object(self, name: str) -> SceneObject:
        color, shape = name.split()
        rng, cfg = self.rng, self.cfg
        size = SIZES[int(rng.integers(2))]
        material = MATERIALS[int(rng.integers(2))]
        x, y = (float(v) for v in rng.uniform(-cfg.arena, cfg.arena, 2))
        theta = float(rng.uniform(0, math.pi / 2)) if shape == "cube" else float(rng.uniform(0, 2 * math.pi))
        radius = cfg.radius_large if size == "large" else cfg.radius_small
        return SceneObject(color, shape, material, size, radius, x, y, theta)

    def _fits(self, ob: SceneObject) -> bool:
        for h in self.hits:
            o = h.ob
            if math.hypot(o.x - ob.x, o.y - ob.y) < o.footprint + ob.footprint + self.cfg.gap:
                return False
        return _in_frame(ob, self.cam, self.n, self.cfg.margin_px * self.n / 64)

    def _visible_counts(self, hits: list[_Hits]) -> list[int]:
        """Supersamples where each object is the nearest surface, with all `hits` in the scene."""
        depth = self.depth
        for h in hits:
            depth[h.sl] = INF
        for h in hits:
            np.minimum(depth[h.sl], h.t, out=depth[h.sl])
        return [int(np.count_nonzero(h.hit & (h.t <= depth[h.sl]))) for h in hits]

    def add(self, name: str) -> bool:
        """Place object `name` so that nothing intersects and every object stays visible; False if it cannot."""
        cfg, s2 = self.cfg, self.s * self.s
        min_px = cfg.min_visible_px * self.area_scale
        for _ in range(cfg.max_attempts):
            ob = self._sample_object(name)
            if not self._fits(ob):
                continue
            rect = _rect(ob, self.cam, self.n, self.s)
            if rect is None:
                continue
            cand = _Hits(ob, rect, self.cam, self.grid)
            if cand.count < min_px * s2:
                continue
            hits = self.hits + [cand]
            vis = self._visible_counts(hits)
            if all(v >= min_px * s2 and v >= cfg.min_visible_frac * h.count for v, h in zip(vis, hits)):
                self.hits.append(cand)
                return True
        return False

    # -- shading
    def _shade_floor(self):
        n, cam, lt = self.n, self.cam, self.lights
        dx, dy, dz = _world_dirs(cam, _camera_grid(n, cam.tan_half))
        t = -cam.pos[2] / np.minimum(dz, -1e-4)
        self.px, self.py = cam.pos[0] + t * dx, cam.pos[1] + t * dy
        fall = 1.0 / (1.0 + 0.006 * (self.px * self.px + self.py * self.py))  # light pool around the arena
        albedo = 0.42
        self.floor_amb = (albedo * (lt.ambient + lt.fill_power * lt.fill[2]) * fall).astype(F32)
        self.floor_key = (albedo * lt.key_power * lt.key[2] * fall).astype(F32)

    def _floor_shadow(self, ob: SceneObject):
        """(slice, visibility) of the key light on the floor around the shadow of `ob` (1 ray per pixel)."""
        key, n = self.lights.key, self.n
        R = ob.bound_radius + 0.4
        k = ob.zc / key[2]
        ax, ay = ob.x - k * key[0], ob.y - k * key[1]  # centre of the shadow ellipse on the floor
        half = R / key[2]
        cols, rows = [], []
        for cx, cy in ((ax - half, ay - half), (ax - half, ay + half), (ax + half, ay - half), (ax + half, ay + half),
                       (ob.x - R, ob.y - R), (ob.x + R, ob.y + R), (ob.x - R, ob.y + R), (ob.x + R, ob.y - R)):
            c, r, depth = self.cam.project((cx, cy, 0.0))
            if depth <= 0.1:  # the shadow reaches behind the camera: test the whole floor
                cols, rows = [0, 1], [0, 1]
                break
            cols.append(c)
            rows.append(r)
        r0, r1 = max(int(math.floor(min(rows) * n)), 0), min(int(math.ceil(max(rows) * n)), n)
        c0, c1 = max(int(math.floor(min(cols) * n)), 0), min(int(math.ceil(max(cols) * n)), n)
        if r1 <= r0 or c1 <= c0:
            return None
        sl = (slice(r0, r1), slice(c0, c1))
        return sl, _key_visibility(ob, self.px[sl], self.py[sl], 0.0, key)

    def _shade_object(self, h: _Hits):
        """Per-object shading terms: colour = albedo·(base + key·vis) + spec·vis, on its supersamples."""
        ob, lt, o = h.ob, self.lights, self.cam.pos
        dx, dy, dz = h.dirs
        t = np.where(h.hit, h.t, 1.0).astype(F32)
        px, py, pz = o[0] + t * dx, o[1] + t * dy, o[2] + t * dz
        nx, ny, nz = _normal(ob, px, py, pz)
        k, f = lt.key, lt.fill
        ndl = np.maximum(nx * k[0] + ny * k[1] + nz * k[2], 0)
        ndf = np.maximum(nx * f[0] + ny * f[1] + nz * f[2], 0)
        amb = lt.ambient * (0.55 + 0.45 * nz) + lt.fill_power * ndf
        # Blinn-Phong half vector between the key light and the viewer (-d)
        hx, hy, hz = k[0] - dx, k[1] - dy, k[2] - dz
        nh = np.clip((nx * hx + ny * hy + nz * hz) / np.sqrt(hx * hx + hy * hy + hz * hz), 0, 1)
        if ob.material == "metal":
            dn = dx * nx + dy * ny + dz * nz
            rz = dz - 2 * dn * nz  # z of the mirror direction: sky above the horizon, floor below
            env = np.where(rz > 0, 0.55 + 0.9 * rz, 0.10)
            base = 0.35 * amb + 0.75 * env
            p = nh * nh
            p = p * p
            sheen = p * p  # nh^8: a broad glint in the metal's colour that flat faces catch too
            key = lt.key_power * (0.35 * ndl + 1.5 * sheen)
            for _ in range(3):
                p = p * p  # nh^64
            spec = 1.6 * lt.key_power * p
        else:
            base = amb
            key = lt.key_power * ndl
            p = nh * nh
            for _ in range(3):
                p = p * p  # nh^16
            spec = 0.10 * lt.key_power * p
        h.base, h.key, h.spec = base.astype(F32), key.astype(F32), spec.astype(F32)
        h.points = (px, py, pz)
        h.shadows = {}  # index j -> key-light visibility on these points past object j

    def _object_shadows(self, i: int, j: int):
        """Key-light visibility on object i's surface past object j (None when j cannot shade i)."""
        a, b = self.hits[i].ob, self.hits[j].ob
        key = self.lights.key
        v = (b.x - a.x, b.y - a.y, b.zc - a.zc)  # from i to j
        along = _dot3(v, key)
        perp = math.sqrt(max(_dot3(v, v) - along * along, 0))
        if along < -(a.bound_radius + b.bound_radius) or perp > a.bound_radius + b.bound_radius + 0.3:
            return None
        return _key_visibility(b, *self.hits[i].points, key)

    def render(self, coverage: bool = False) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """The images after each added object (uint8 (R, R, 3)) and, if asked, per-object pixel coverage."""
        n, s = self.n, self.s
        self._shade_floor()
        for i, h in enumerate(self.hits):
            self._shade_object(h)
            for j in range(len(self.hits)):
                if j != i:
                    vis = self._object_shadows(i, j)
                    if vis is not None:
                        h.shadows[j] = vis
        floor_vis = np.ones((n, n), F32)
        depth = self.depth
        layer = [np.zeros((n * s, n * s), F32) for _ in range(3)]
        images, covers = [], [] if coverage else None
        for k, hk in enumerate(self.hits):
            fs = self._floor_shadow(hk.ob)
            if fs is not None:
                floor_vis[fs[0]] *= fs[1]
            floor = self.floor_amb + self.floor_key * floor_vis  # (R, R) linear gray
            out = [floor, floor.copy(), floor.copy()]
            hits = self.hits[:k + 1]
            r0 = min(h.rect[0] for h in hits)
            r1 = max(h.rect[1] for h in hits)
            c0 = min(h.rect[2] for h in hits)
            c1 = max(h.rect[3] for h in hits)
            bb = (slice(r0, r1), slice(c0, c1))
            depth[bb] = INF
            for c in range(3):
                layer[c][bb] = 0
            for i, h in enumerate(hits):
                vis = None
                for j, v in h.shadows.items():
                    if j <= k:
                        vis = v if vis is None else vis * v
                lit = h.key if vis is None else h.key * vis
                spec = h.spec if vis is None else h.spec * vis
                d = depth[h.sl]
                nearer = h.t < d
                d[nearer] = h.t[nearer]
                alb = _ALBEDO[h.ob.color]
                for c in range(3):
                    col = alb[c] * (h.base + lit) + spec
                    layer[c][h.sl][nearer] = col[nearer]
            hb, wb = (r1 - r0) // s, (c1 - c0) // s
            pb = (slice(r0 // s, r1 // s), slice(c0 // s, c1 // s))
            inv = 1.0 / (s * s)
            cov = (depth[bb] < INF).reshape(hb, s, wb, s).sum(axis=(1, 3), dtype=F32) * inv
            for c in range(3):
                col = layer[c][bb].reshape(hb, s, wb, s).sum(axis=(1, 3), dtype=F32) * inv
                out[c][pb] = out[c][pb] * (1 - cov) + col
            lin = np.stack(out, axis=-1)
            idx = (np.clip(lin, 0, 1) * 4095 + 0.5).astype(np.intp)
            images.append(_LUT[idx])
            if coverage:
                cv = np.zeros((k + 1, n, n), F32)
                for i, h in enumerate(hits):
                    mine = np.zeros((n * s, n * s), bool)
                    mine[h.sl] = h.hit & (h.t <= depth[h.sl])
                    cv[i] = mine.reshape(n, s, n, s).sum(axis=(1, 3)) * inv
                covers.append(cv)
        return images, covers


def render_scene(names: list[str], rng: np.random.Generator, cfg: SynthConfig | None = None,
                 coverage: bool = False) -> SceneRender:
    """Render objects `names` added one at a time; image k shows names[: k + 1]."""
    cfg = cfg or SynthConfig()
    for _restart in range(50):
        sc = _SceneRenderer(rng, cfg)
        if all(sc.add(name) for name in names):
            images, covers = sc.render(coverage)
            return SceneRender(images, [h.ob for h in sc.hits], covers)
    raise RuntimeError(f"could not place {names} after 50 scene restarts; the arena is too small for the settings")


def scene_rng(seed: int, *key: int) -> np.random.Generator:
    """The random generator of one scene, from (seed, stream, index...) alone."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(int(k) for k in key)))


def render_labels(label_sets: list[list[str]], seed: int = 0, size: int = 64) -> np.ndarray:
    """One rendered image per label set, uint8 (B, R, R, 3); reproducible from `seed`."""
    cfg = SynthConfig(size=size)
    cfg.check()
    out = [render_scene(L.validate(s, f"label set {i}"), scene_rng(seed, _S_GT, 9, i), cfg).images[-1]
           for i, s in enumerate(label_sets)]
    return np.stack(out)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (R, R, 3) image."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=3)  # 40% faster than 6, files ~15% larger
    return buf.getvalue()


# ---------------------------------------------------------------- label sets
def _pairs(labels) -> set[frozenset[str]]:
    return {frozenset(p) for p in itertools.combinations(labels, 2)}


def sample_held_out(seed: int) -> tuple[list[list[str]], set[frozenset[str]]]:
    """The unseen test sets and the object pairs training must never show together.

    16 objects are split into 4 groups of 4; every pair inside a group is held out of training, and the
    unseen sets are all 16 triples plus 16 of the 24 pairs inside the groups (so none of their pairs is seen).
    """
    rng = scene_rng(seed, _S_TESTS, 0)
    chosen = [L.OBJECTS[i] for i in rng.permutation(len(L.OBJECTS))[:16]]
    groups = [chosen[4 * g:4 * g + 4] for g in range(4)]
    held = set().union(*(_pairs(g) for g in groups))
    triples = [list(c) for g in groups for c in itertools.combinations(g, 3)]
    pairs = [list(c) for g in groups for c in itertools.combinations(g, 2)]
    pick = rng.permutation(len(pairs))[:TEST_SETS - len(triples)]
    sets = triples + [pairs[i] for i in sorted(pick)]
    order = rng.permutation(len(sets))
    return [[str(x) for x in rng.permutation(sets[i])] for i in order], held


def sample_train_labels(rng: np.random.Generator, n: int, held: set[frozenset[str]]) -> list[str]:
    """n distinct objects drawn uniformly one at a time, never completing a held-out pair."""
    out: list[str] = []
    for _ in range(n):
        allowed = [o for o in L.OBJECTS if o not in out and all(frozenset((o, p)) not in held for p in out)]
        out.append(allowed[int(rng.integers(len(allowed)))])
    return out


def sample_test(seed: int, held: set[frozenset[str]]) -> list[list[str]]:
    """32 distinct label sets drawn like the training scenes, 1-3 objects each."""
    rng = scene_rng(seed, _S_TESTS, 1)
    out, seen = [], set()
    while len(out) < TEST_SETS:
        labels = sample_train_labels(rng, int(rng.integers(1, L.MAX_OBJECTS + 1)), held)
        if frozenset(labels) not in seen:
            seen.add(frozenset(labels))
            out.append(labels)
    return out


_BINDING_PATTERNS = (("two-two", 12), ("colour-in-3-shapes", 4), ("shape-in-3-colours", 4),
                     ("colour-in-2-shapes", 8), ("shape-in-2-colours", 4))


def _binding_set(rng: np.random.Generator, kind: str) -> list[str]:
    """One label set of a binding pattern, e.g. 'two-two' = {c1 s1, c2 s1, c1 s2}."""
    c = [str(x) for x in rng.permutation(L.COLORS)[:3]]
    s = [str(x) for x in rng.permutation(L.SHAPES)]
    if kind == "two-two":
        out = [f"{c[0]} {s[0]}", f"{c[1]} {s[0]}", f"{c[0]} {s[1]}"]
    elif kind == "colour-in-3-shapes":
        out = [f"{c[0]} {x}" for x in s]
    elif kind == "shape-in-3-colours":
        out = [f"{x} {s[0]}" for x in c]
    elif kind == "colour-in-2-shapes":
        out = [f"{c[0]} {s[0]}", f"{c[0]} {s[1]}"]
    else:
        out = [f"{c[0]} {s[0]}", f"{c[1]} {s[0]}"]
    return [out[i] for i in rng.permutation(len(out))]


def sample_new_test(seed: int, held: set[frozenset[str]]) -> list[list[str]]:
    """32 binding-heavy label sets: colours repeated across shapes and shapes repeated across colours.

    Like the course's new_test: 20 triples (12 {c1 s1, c2 s1, c1 s2}, 4 one colour in three shapes,
    4 one shape in three colours) and 12 pairs (8 one colour in two shapes, 4 one shape in two colours).
    No set holds a held-out pair, so new_test isolates binding from unseen combinations.
    """
    rng = scene_rng(seed, _S_TESTS, 2)
    out, seen = [], set()
    for kind, count in _BINDING_PATTERNS:
        for _ in range(count):
            for _attempt in range(1000):
                labels = _binding_set(rng, kind)
                if frozenset(labels) not in seen and not (_pairs(labels) & held):
                    break
            else:
                raise RuntimeError(f"no new {kind} label set left; too many held-out pairs")
            seen.add(frozenset(labels))
            out.append(labels)
    return [out[i] for i in rng.permutation(len(out))]


def is_binding_heavy(labels: list[str]) -> bool:
    """True when two objects of the set share a colour or a shape."""
    colors = [n.split()[0] for n in labels]
    shapes = [n.split()[1] for n in labels]
    return len(labels) >= 2 and (len(set(colors)) < len(colors) or len(set(shapes)) < len(shapes))


def unseen_from_train(train_sets: list[list[str]], seed: int) -> tuple[list[list[str]], str]:
    """32 label sets not seen in `train_sets`, and the definition met: 'pairs' or 'triples'.

    'pairs': no two objects of a set ever appear together in one training set (used when enough such sets
    exist); otherwise 'triples': 3-object sets that are no training set (every pair may have been seen).
    """
    rng = scene_rng(seed, _S_TESTS, 3)
    seen_pairs = set().union(*(_pairs(s) for s in train_sets))
    seen_sets = {frozenset(s) for s in train_sets}
    strict = [list(c) for k in (3, 2) for c in itertools.combinations(L.OBJECTS, k) if not (_pairs(c) & seen_pairs)]
    if len(strict) >= TEST_SETS:
        cands, how = strict, "pairs"
    else:
        cands = [list(c) for c in itertools.combinations(L.OBJECTS, 3) if frozenset(c) not in seen_sets]
        how = "triples"
        if len(cands) < TEST_SETS:
            raise LabelError(f"training label sets cover all but {len(cands)} triples; cannot draw "
                             f"{TEST_SETS} unseen test sets")
    pick = sorted(rng.permutation(len(cands))[:TEST_SETS])
    return [[str(x) for x in rng.permutation(cands[i])] for i in pick], how


# ---------------------------------------------------------------- dataset
@dataclass
class _Job:
    """One scene to render: its random key, object names in addition order, and (file, step) to save."""

    key: tuple[int, ...]
    names: list[str]
    files: list[tuple[str, int]]  # (path relative to the output folder, index of the image in the scene)


def _like_scenes(path: Path) -> tuple[dict[str, list[str]], list[_Job]]:
    """Read a train.json and group its files into incremental scenes (names like 'x_0.png', 'x_1.png', ...)."""
    from .data import read_train  # validated: errors name the file and the entry

    if not path.is_file():
        raise DataError(f"{path}: --like file not found; give a train.json such as the course's")
    train = read_train(path)
    groups: dict[str, list[tuple[int, str]]] = {}
    singles: list[str] = []
    for fname in train:
        if "/" in fname or "\\" in fname or fname.strip(".") == "":
            raise LabelError(f"{path}: entry {fname!r}: expected a plain file name such as 'CLEVR_train_000001_0.png'")
        m = _COURSE_NAME.match(fname)
        if m:
            groups.setdefault(m.group("scene"), []).append((int(m.group("step")), fname))
        else:
            singles.append(fname)
    chains: list[list[str]] = []
    for scene in groups.values():
        scene.sort()
        chain: list[str] = []
        last = None
        for step, fname in scene:
            if chain and step == last + 1 and _extends(train[chain[-1]], train[fname]):
                chain.append(fname)
            else:
                if chain:
                    chains.append(chain)
                chain = [fname]
            last = step
        chains.append(chain)
    chains += [[f] for f in singles]
    chains.sort(key=lambda c: c[0])
    jobs = []
    for idx, chain in enumerate(chains):
        names = list(train[chain[0]])
        for fname in chain[1:]:
            names += [o for o in train[fname] if o not in names]
        first = len(train[chain[0]]) - 1
        jobs.append(_Job((_S_RENDER, idx), names, [(f"iclevr/{f}", first + k) for k, f in enumerate(chain)]))
    return train, jobs


def _extends(before: list[str], after: list[str]) -> bool:
    """True when `after` is `before` plus exactly one object."""
    return len(after) == len(before) + 1 and set(before) <= set(after)


def _render_job(args) -> int:
    """Render one scene and write its missing files; returns the number of images written."""
    seed, cfg, job, out = args
    res = render_scene(job.names, scene_rng(seed, *job.key), cfg)
    written = 0
    for rel, step in job.files:
        path = os.path.join(out, rel)
        if not os.path.exists(path):
            write_bytes(path, encode_png(res.images[step]))
            written += 1
    return written


def _state(seed: int, cfg: SynthConfig, scenes: int | None, like: Path | None) -> dict:
    """What decides a folder's bytes: renderer version, seed, settings and the scene list."""
    st = {"renderer": RENDER_VERSION, "seed": seed, "config": asdict(cfg)}
    if like is None:
        st["scenes"] = scenes
    else:
        st["like"] = hashlib.sha1(like.read_bytes()).hexdigest()
    return st


def _cpu_count() -> int:
    """Cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _check_int(name: str, value, low: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"--{name} {value!r}: {hint}")
    return int(value)


def write_dataset(out: str | os.PathLike, scenes: int = 6000, seed: int = 0, size: int = 64, workers: int = 0,
                  like: str | os.PathLike | None = None, progress: bool = True,
                  cfg: SynthConfig | None = None, all_pairs: bool = False) -> dict:
    """Render a CLEVR-style dataset in the iCLEVR layout under `out`; returns a summary dict.

    `all_pairs=True` lets training scenes show every object pair (the test files stay the same): a training
    set for an evaluator, which must recognise the pairs that unseen_test asks for.

    Writes iclevr/*.png and <split>_gt/<i>.png first, then objects.json, the test files and train.json last
    (so train.json's presence means the render finished). Files already present are kept: an interrupted
    run, re-run with the same options, renders only what is missing.
    """
    seed = _check_int("seed", seed, 0, "use a non-negative integer")
    size = _check_int("size", size, 16, "images must be at least 16 px wide (e.g. 64)")
    workers = _check_int("workers", workers, 0, "use 0 (all cores) or a positive number of processes")
    cfg = SynthConfig(**{**asdict(cfg), "size": size}) if cfg is not None else SynthConfig(size=size)
    cfg.check()
    like_path = Path(like) if like is not None else None
    if like_path is None:
        scenes = _check_int("scenes", scenes, 1, "render at least 1 scene (each gives 3 images)")
    check_writable_dir(out)  # created only once the plan below has checked every input

    # plan: label sets and jobs
    if like_path is not None:
        train, jobs = _like_scenes(like_path)
        splits = {}
        for split in ("test", "new_test"):
            sibling = like_path.parent / f"{split}.json"
            if sibling.is_file():
                from .data import read_label_file
                splits[split] = read_label_file(sibling)
        held: set = set()
        train_sets = list(train.values())
        splits.setdefault("test", sample_test(seed, held))
        splits.setdefault("new_test", sample_new_test(seed, held))
        splits["unseen_test"], unseen_how = unseen_from_train(train_sets, seed)
    else:
        unseen, held = sample_held_out(seed)
        train_held = set() if all_pairs else held
        train, jobs = {}, []
        for i in range(scenes):
            names = sample_train_labels(scene_rng(seed, _S_LABELS, i), L.MAX_OBJECTS, train_held)
            files = []
            for k in range(len(names)):
                fname = f"synth_{i:06d}_{k}.png"
                train[fname] = names[:k + 1]
                files.append((f"iclevr/{fname}", k))
            jobs.append(_Job((_S_RENDER, i), names, files))
        splits = {"test": sample_test(seed, held), "new_test": sample_new_test(seed, held), "unseen_test": unseen}
        unseen_how = "pairs"
    for si, split in enumerate(TEST_SPLITS):
        for i, labels in enumerate(splits[split]):
            jobs.append(_Job((_S_GT, si, i), list(labels), [(f"{split}_gt/{i}.png", len(labels) - 1)]))

    # refuse to mix renders made with other options into one folder
    out = ensure_writable_dir(out)
    state_path = out / ".synth.json"
    state = _state(seed, cfg, None if like_path else scenes, like_path)
    if all_pairs:
        state["all_pairs"] = True
    if state_path.exists():
        try:
            old = json.loads(state_path.read_text())
        except (OSError, ValueError):
            old = None
        if old != state:
            diff = {k: v for k, v in state.items() if not isinstance(old, dict) or old.get(k) != v}
            raise ConfigError(f"{out}: holds a render made with other options (differs in {sorted(diff)}); "
                              f"use another --out or delete the folder")
    elif (out / "train.json").exists() or (out / "iclevr").is_dir():
        raise ConfigError(f"{out}: already holds a dataset not made by `lab6 synth` with these options; "
                          f"use an empty folder")
    else:
        write_json(state_path, state)

    # render what is missing
    todo = [j for j in jobs if not all((out / rel).exists() for rel, _ in j.files)]
    for sub in ["iclevr"] + [f"{s}_gt" for s in TEST_SPLITS]:
        (out / sub).mkdir(exist_ok=True)
    n_images = sum(len(j.files) for j in jobs)
    remaining = sum(1 for j in todo for rel, _ in j.files if not (out / rel).exists())
    nproc = max(1, min(workers or _cpu_count(), len(todo) or 1))
    written = 0
    if todo:
        from tqdm.auto import tqdm

        args = [(seed, cfg, j, str(out)) for j in todo]
        with tqdm(total=remaining, unit="img", desc=f"synth {out}", disable=not progress, smoothing=0.05) as bar:
            if nproc == 1:
                for a in args:
                    k = _render_job(a)
                    written += k
                    bar.update(k)
            else:
                import multiprocessing as mp

                ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
                with ctx.Pool(nproc) as pool:
                    for k in pool.imap_unordered(_render_job, args, chunksize=8):
                        written += k
                        bar.update(k)

    # label files last: their presence means every image is there
    write_json(out / "objects.json", L.OBJECT_TO_INDEX)
    for split in TEST_SPLITS:
        write_json(out / f"{split}.json", splits[split])
    write_json(out / "train.json", train)
    return {"out": str(out), "train_images": len(train), "scenes": len([j for j in jobs if j.key[0] == _S_RENDER]),
            "test_sets": {s: len(splits[s]) for s in TEST_SPLITS}, "images": n_images, "rendered": written,
            "workers": nproc, "unseen_definition": unseen_how,
            "held_out_pairs": [] if all_pairs else sorted(sorted(p) for p in held)}


# ---------------------------------------------------------------- pictures
def sample_grid(root: str | os.PathLike, n: int = 32, seed: int = 0, ncol: int = 8):
    """A labelled grid figure of `n` random training images of a dataset folder (captions: their labels)."""
    from .data import CourseData, load_image
    from .plots import caption, labelled_grid

    data = CourseData(root)
    names = list(data.train)
    pick = np.random.default_rng(seed).choice(len(names), size=min(n, len(names)), replace=False)
    images = np.stack([load_image(data.image_dir / names[i], 64) for i in pick])
    return labelled_grid(images, [caption(data.train[names[i]]) for i in pick], ncol=ncol)
