"""The renderer: a scene's floor and objects shaded under one camera and light rig, one image per added object.

Rays: one per output pixel for the gray ground plane (smooth, so no supersampling needed) and `supersample`²
per pixel inside each object's screen rectangle (anti-aliased silhouettes). Vectors are kept as separate x/y/z
float32 arrays and only element-wise IEEE operations (+, *, /, sqrt, min, max) touch pixels, so a scene's bytes
do not depend on the CPU's SIMD flavour or the worker count. A scene is built one object at a time, as in
iCLEVR: the image after each addition is kept, and all of a scene's images share one camera, one light rig and
the per-object ray hits.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .. import labels as L
from .camera import camera_grid, dot3, in_frame, sample_camera, sample_lights, screen_rect, world_dirs
from .raycast import ObjectHits, key_visibility, surface_normal
from .scene import F32, INF, MATERIALS, S_GT, SIZES, SceneObject, SynthConfig, look_config, scene_rng

RENDER_VERSION = 1  # bump when the renderer's output changes; a folder rendered by another version is refused
_ALBEDO = {c: tuple((v / 255.0) ** 2.2 for v in rgb) for c, rgb in L.PALETTE.items()}  # linear RGB


@dataclass
class SceneRender:
    """The images of a scene after each added object, and (optionally) per-object coverage at output size."""

    images: list[np.ndarray]           # uint8 (H, W, 3) (H = W = R unless cfg.width), image k holds objects[: k + 1]
    objects: list[SceneObject]
    coverage: list[np.ndarray] | None  # image k: float (k + 1, H, W), fraction of each pixel showing object i


_LUT = np.round(255 * (np.arange(4096) / 4095.0) ** (1 / 2.2)).astype(np.uint8)


class _SceneRenderer:
    """Renders one scene: camera, lights, floor and objects; objects are added one at a time."""

    def __init__(self, rng: np.random.Generator, cfg: SynthConfig):
        self.rng, self.cfg = rng, cfg
        (self.n, self.w), self.s = cfg.shape, cfg.supersample  # image height and width
        self.cam = sample_camera(rng, cfg)
        self.lights = sample_lights(rng, cfg, self.cam)
        self.tint = tuple(float(g) for g in cfg.key_rgb)  # the key light's colour
        self.grid = camera_grid(self.n * self.s, self.cam.tan_half, self.w * self.s)
        self.area_scale = (self.n / 64.0) * (self.w / 64.0)
        self.hits: list[ObjectHits] = []
        self.depth = np.full((self.n * self.s, self.w * self.s), INF, F32)  # scratch z-buffer of the object layer

    # -- placement
    def _sample_object(self, name: str) -> SceneObject:
        colour, shape = name.split()
        rng, cfg = self.rng, self.cfg
        size = SIZES[int(rng.integers(2))]
        material = _draw_material(rng, cfg.metal_share)
        x, y = (float(v) for v in rng.uniform(-cfg.arena, cfg.arena, 2))
        theta = float(rng.uniform(0, math.pi / 2)) if shape == "cube" else float(rng.uniform(0, 2 * math.pi))
        radius = cfg.radius_large if size == "large" else cfg.radius_small
        return SceneObject(colour, shape, material, size, radius, x, y, theta)

    def _fits(self, ob: SceneObject) -> bool:
        for h in self.hits:
            o = h.ob
            if math.hypot(o.x - ob.x, o.y - ob.y) < o.footprint + ob.footprint + self.cfg.gap:
                return False
        return in_frame(ob, self.cam, self.n, self.cfg.margin_px * self.n / 64, self.w)

    def _visible_counts(self, hits: list[ObjectHits]) -> list[int]:
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
            rect = screen_rect(ob, self.cam, self.n, self.s, self.w)
            if rect is None:
                continue
            cand = ObjectHits(ob, rect, self.cam, self.grid)
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
        dx, dy, dz = world_dirs(cam, camera_grid(n, cam.tan_half, self.w))
        t = -cam.pos[2] / np.minimum(dz, -1e-4)
        self.px, self.py = cam.pos[0] + t * dx, cam.pos[1] + t * dy
        fall = 1.0 / (1.0 + 0.006 * (self.px * self.px + self.py * self.py))  # light pool around the arena
        albedo = 0.42
        self.floor_amb = (albedo * (lt.ambient + lt.fill_power * lt.fill[2]) * fall).astype(F32)
        self.floor_key = (albedo * lt.key_power * lt.key[2] * fall).astype(F32)

    def _floor_shadow(self, ob: SceneObject):
        """(slice, visibility) of the key light on the floor around the shadow of `ob` (1 ray per pixel)."""
        key, n, w = self.lights.key, self.n, self.w
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
        c0, c1 = max(int(math.floor(min(cols) * w)), 0), min(int(math.ceil(max(cols) * w)), w)
        if r1 <= r0 or c1 <= c0:
            return None
        sl = (slice(r0, r1), slice(c0, c1))
        return sl, key_visibility(ob, self.px[sl], self.py[sl], 0.0, key)

    def _shade_object(self, h: ObjectHits):
        """Per-object shading terms: colour = albedo·(base + key·vis) + spec·vis, on its supersamples."""
        ob, lt, o = h.ob, self.lights, self.cam.pos
        dx, dy, dz = h.dirs
        t = np.where(h.hit, h.t, 1.0).astype(F32)
        px, py, pz = o[0] + t * dx, o[1] + t * dy, o[2] + t * dz
        nx, ny, nz = surface_normal(ob, px, py, pz)
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
        along = dot3(v, key)
        perp = math.sqrt(max(dot3(v, v) - along * along, 0))
        if along < -(a.bound_radius + b.bound_radius) or perp > a.bound_radius + b.bound_radius + 0.3:
            return None
        return key_visibility(b, *self.hits[i].points, key)

    def render(self, coverage: bool = False) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """The images after each added object (uint8 (H, W, 3)) and, if asked, per-object pixel coverage."""
        n, w, s, tint = self.n, self.w, self.s, self.tint
        self._shade_floor()
        for i, h in enumerate(self.hits):
            self._shade_object(h)
            for j in range(len(self.hits)):
                if j != i:
                    vis = self._object_shadows(i, j)
                    if vis is not None:
                        h.shadows[j] = vis
        floor_vis = np.ones((n, w), F32)
        depth = self.depth
        layer = [np.zeros((n * s, w * s), F32) for _ in range(3)]
        images, covers = [], [] if coverage else None
        for k, hk in enumerate(self.hits):
            fs = self._floor_shadow(hk.ob)
            if fs is not None:
                floor_vis[fs[0]] *= fs[1]
            if tint == (1.0, 1.0, 1.0):
                floor = self.floor_amb + self.floor_key * floor_vis  # (H, W) linear gray
                out = [floor, floor.copy(), floor.copy()]
            else:
                out = [self.floor_amb + (self.floor_key * g) * floor_vis for g in tint]
            hits = self.hits[:k + 1]
            r0 = min(h.rect[0] for h in hits)
            r1 = max(h.rect[1] for h in hits)
            c0 = min(h.rect[2] for h in hits)
            c1 = max(h.rect[3] for h in hits)
            bb = (slice(r0, r1), slice(c0, c1))
            depth[bb] = INF
            for c in range(3):
                layer[c][bb] = 0
            for h in hits:
                vis = None
                for j, v in h.shadows.items():
                    if j <= k:
                        vis = v if vis is None else vis * v
                lit = h.key if vis is None else h.key * vis
                spec = h.spec if vis is None else h.spec * vis
                d = depth[h.sl]
                nearer = h.t < d
                d[nearer] = h.t[nearer]
                alb = _ALBEDO[h.ob.colour]
                for c in range(3):
                    col = alb[c] * (h.base + lit) + spec if tint[c] == 1.0 else \
                        alb[c] * (h.base + tint[c] * lit) + tint[c] * spec
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
                cv = np.zeros((k + 1, n, w), F32)
                for i, h in enumerate(hits):
                    mine = np.zeros((n * s, w * s), bool)
                    mine[h.sl] = h.hit & (h.t <= depth[h.sl])
                    cv[i] = mine.reshape(n, s, w, s).sum(axis=(1, 3)) * inv
                covers.append(cv)
        return images, covers


def _draw_material(rng: np.random.Generator, metal_share: float) -> str:
    """'metal' with chance `metal_share`; at 0.5 the draw of the default renders (one integer), keeping their bytes."""
    if metal_share == 0.5:
        return MATERIALS[int(rng.integers(2))]
    return MATERIALS[int(rng.random() < metal_share)]


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


def render_labels(label_sets: list[list[str]], seed: int = 0, size: int = 64, look: str = "default",
                  width: int = 0) -> np.ndarray:
    """One rendered image per label set in a named look, uint8 (B, size, width or size, 3); reproducible from `seed`."""
    cfg = look_config(look, size=size, width=width)
    out = [render_scene(L.validate(s, f"label set {i}"), scene_rng(seed, S_GT, 9, i), cfg).images[-1]
           for i, s in enumerate(label_sets)]
    return np.stack(out)


def encode_png(image: np.ndarray, rgba: bool = False) -> bytes:
    """PNG bytes of a uint8 (H, W, 3) image; `rgba` adds an opaque alpha channel (as the course's files have)."""
    buf = io.BytesIO()
    im = Image.fromarray(image)
    if rgba:
        im.putalpha(255)
    im.save(buf, format="PNG", compress_level=3)  # 40% faster than 6, files ~15% larger
    return buf.getvalue()
