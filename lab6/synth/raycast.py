"""Ray casting, element-wise on a structure of arrays: where rays enter and leave each shape, its surface
normals, soft key-light shadows, and one object's primary-ray hits."""
from __future__ import annotations

import math

import numpy as np

from .camera import Camera, world_dirs
from .scene import F32, INF, SceneObject


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


def surface_normal(ob: SceneObject, px, py, pz):
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


def key_visibility(ob: SceneObject, px, py, pz, key) -> np.ndarray:
    """Soft visibility (0 shadowed .. 1 lit) of the key light from points p past object `ob`."""
    near, far, clr = _interval(ob, px, py, pz, key[0], key[1], key[2])
    w = 0.05 + 0.07 * np.maximum(near, 0)  # penumbra widens with the distance to the occluder
    v = np.clip(0.5 + clr / w, 0, 1)
    v = v * v * (3 - 2 * v)
    return np.where(far > 0, v, 1).astype(F32)


class ObjectHits:
    """One object's primary-ray hits inside its screen rectangle (supersampled grid)."""

    def __init__(self, ob: SceneObject, rect: tuple[int, int, int, int], cam: Camera, grid):
        self.ob, self.rect = ob, rect
        i0, i1, j0, j1 = rect
        self.sl = (slice(i0, i1), slice(j0, j1))
        self.dirs = world_dirs(cam, grid, self.sl)
        o = cam.pos
        near, far, _ = _interval(ob, o[0], o[1], o[2], *self.dirs)
        self.hit = (near < far) & (far > 0)
        self.t = np.where(self.hit, near, INF).astype(F32)
        self.count = int(self.hit.sum())
