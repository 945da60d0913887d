"""A procedural underwater world in numpy: short clips whose content is fully described by a few attributes.

Every clip shows one subject moving one way under one kind of light, so a prompt written from the attributes
is an exact description of the clip. The physics is simple but consistent: light fades and turns blue-green
with depth (red is absorbed first), bubbles speed up and grow as they rise, a school keeps formation,
jellyfish move in pulses, turtles paddle and rays flap. Coordinates are fractions of the frame, y downward.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

SUBJECTS = ("bubbles", "jellyfish", "fish", "turtle", "ray", "particles")
MOTIONS = ("up", "down", "left", "right", "still")
SPEEDS = ("slow", "fast")
PALETTES = ("deep_blue", "turquoise", "green_murk", "red_vent", "sunbeams")

DIRECTIONS: dict[str, tuple[float, float]] = {
    "up": (0.0, -1.0), "down": (0.0, 1.0), "left": (-1.0, 0.0), "right": (1.0, 0.0), "still": (0.0, 0.0),
}
# Fraction of the frame crossed per frame: over a 17-frame clip "slow" travels ~20%, "fast" ~40% of it.
SPEED_PER_FRAME = {"slow": 0.0125, "fast": 0.026}


@dataclasses.dataclass(frozen=True)
class SceneAttributes:
    """What a clip shows; the prompt is written from exactly these fields."""

    subject: str
    motion: str
    speed: str
    palette: str

    def __post_init__(self) -> None:
        for name, allowed in (("subject", SUBJECTS), ("motion", MOTIONS), ("speed", SPEEDS),
                              ("palette", PALETTES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.motion not in allowed_motions(self.subject):
            raise ValueError(f"{self.subject} cannot move {self.motion}")

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def allowed_motions(subject: str) -> tuple[str, ...]:
    """Bubbles are buoyant: they only rise. Everything else can swim or be carried any way, or hold still."""
    return ("up",) if subject == "bubbles" else MOTIONS


def all_attributes() -> list[SceneAttributes]:
    """Every valid combination, in a fixed order."""
    return [SceneAttributes(s, m, v, p) for s in SUBJECTS for m in allowed_motions(s) for v in SPEEDS
            for p in PALETTES]


def sample_attributes(rng: np.random.Generator) -> SceneAttributes:
    """Uniform over subject, motion, speed and palette (motion restricted by the subject)."""
    subject = SUBJECTS[rng.integers(len(SUBJECTS))]
    motions = allowed_motions(subject)
    return SceneAttributes(subject, motions[rng.integers(len(motions))], SPEEDS[rng.integers(len(SPEEDS))],
                           PALETTES[rng.integers(len(PALETTES))])


# --- light and water -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Water:
    top: tuple[float, float, float]  # water colour at the top of the frame
    bottom: tuple[float, float, float]  # ... and at the bottom
    light: tuple[float, float, float]  # light reaching the top of the frame
    absorption: float  # how fast light dies over the frame's height (per channel via _CHANNEL_ABSORPTION)
    clarity: float  # 1 = objects keep their colour; lower = they fade into the water (murk)


# Red is absorbed first, then green, then blue: deeper things look blue-green and darker.
_CHANNEL_ABSORPTION = np.array([2.6, 0.9, 0.45], np.float32)

_WATERS = {
    "deep_blue": _Water((0.05, 0.18, 0.42), (0.01, 0.04, 0.15), (0.35, 0.55, 0.95), 0.9, 0.85),
    "turquoise": _Water((0.42, 0.88, 0.84), (0.10, 0.55, 0.62), (1.0, 1.0, 0.95), 0.4, 0.95),
    "green_murk": _Water((0.36, 0.46, 0.24), (0.13, 0.21, 0.11), (0.8, 0.9, 0.6), 0.7, 0.6),
    "red_vent": _Water((0.02, 0.03, 0.09), (0.09, 0.04, 0.05), (0.12, 0.15, 0.3), 1.0, 0.85),
    "sunbeams": _Water((0.48, 0.76, 0.94), (0.06, 0.30, 0.55), (1.0, 1.0, 1.0), 0.6, 0.95),
}
_VENT_GLOW = np.array([1.0, 0.32, 0.06], np.float32)
# Haze: how strongly suspended matter modulates the water's brightness (murk is thick with it).
_HAZE = {"deep_blue": 0.4, "turquoise": 0.3, "green_murk": 0.5, "red_vent": 0.4, "sunbeams": 0.3}
_HAZE_CELLS = 4  # clouds about a quarter of the frame across


class _Scene:
    """Per-clip lighting: the water behind everything and the light falling on an object at (x, y)."""

    def __init__(self, palette: str, height: int, width: int, rng: np.random.Generator) -> None:
        self.palette = palette
        self.water = _WATERS[palette]
        self.h, self.w = height, width
        self.yy, self.xx = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width,
                                       indexing="ij")
        self.vent_x = float(rng.uniform(0.3, 0.7))
        self.beam_angle = float(rng.uniform(-0.45, 0.45))
        self.beam_phase = float(rng.uniform(0, 2 * math.pi))
        self.flicker_phase = float(rng.uniform(0, 2 * math.pi))
        # Haze: soft clouds of suspended matter, carried by the current (set by render_clip) at ``drift``.
        self.haze = rng.uniform(0, 1, (_HAZE_CELLS, _HAZE_CELLS)).astype(np.float32)
        self.drift = (0.0, 0.0)  # (x, y) per frame, fractions of the frame width

    def background(self, t: int) -> np.ndarray:
        water = self.water
        depth = self.yy[..., None] ** 1.3
        img = np.asarray(water.top, np.float32) * (1 - depth) + np.asarray(water.bottom, np.float32) * depth
        if self.palette == "sunbeams":
            # Screen blend: shafts brighten the water smoothly and never clip to white.
            img = 1 - (1 - img) * (1 - self._beams(t)[..., None] * np.array([0.5, 0.5, 0.4], np.float32))
        elif self.palette == "red_vent":
            img = img + self._vent(t)[..., None] * _VENT_GLOW * 0.9
        return (img * (1 + _HAZE[self.palette] * (self._haze_at(t) - 0.5))[..., None]).astype(np.float32)

    def _haze_at(self, t: int) -> np.ndarray:
        """The haze texture (periodic, bilinear) shifted by the current's drift after ``t`` frames."""
        n = _HAZE_CELLS
        gx = (self.xx - self.drift[0] * t) * n
        gy = (self.yy - self.drift[1] * t * self.w / self.h) * n
        x0, y0 = np.floor(gx).astype(int), np.floor(gy).astype(int)
        fx, fy = gx - x0, gy - y0
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)  # smoothstep: no creases at cell edges
        g = self.haze
        x1, y1 = (x0 + 1) % n, (y0 + 1) % n
        x0, y0 = x0 % n, y0 % n
        top = g[y0, x0] * (1 - fx) + g[y0, x1] * fx
        bottom = g[y1, x0] * (1 - fx) + g[y1, x1] * fx
        return top * (1 - fy) + bottom * fy

    def light(self, x: np.ndarray, y: np.ndarray, t: int) -> np.ndarray:
        """(N, 3) light on objects at (x, y): surface light absorbed with depth, plus the vent's glow."""
        y = np.clip(np.asarray(y, np.float32), 0.0, 1.0)
        absorbed = np.exp(-self.water.absorption * _CHANNEL_ABSORPTION[None] * y[:, None] * 2.0)
        lit = np.asarray(self.water.light, np.float32)[None] * absorbed
        if self.palette == "red_vent":
            lit = lit + self._vent_at(np.asarray(x, np.float32), y, t)[:, None] * _VENT_GLOW * 1.3
        elif self.palette == "sunbeams":
            lit = lit * 1.15
        return lit.astype(np.float32)

    def shade(self, albedo: np.ndarray, x: np.ndarray, y: np.ndarray, t: int) -> np.ndarray:
        """Colour seen for objects of ``albedo`` (N, 3) at (x, y): lit, then veiled by the water in between."""
        albedo = np.atleast_2d(np.asarray(albedo, np.float32))
        y_c = np.clip(np.asarray(y, np.float32), 0.0, 1.0)
        depth = (y_c ** 1.3)[:, None]
        water = np.asarray(self.water.top, np.float32) * (1 - depth) + np.asarray(self.water.bottom) * depth
        c = self.water.clarity
        return (albedo * self.light(x, y, t) * c + water * (1 - c)).astype(np.float32)

    def _beams(self, t: int) -> np.ndarray:
        sway = 0.008 * math.sin(0.25 * t + self.beam_phase)  # gentle: the beams must not read as motion
        u = self.xx + self.beam_angle * self.yy + sway
        # Broad, soft shafts: light scattered in the water has no hard edges.
        stripes = 0.5 + 0.5 * np.sin(2 * math.pi * (u * 1.8 + 0.1 * self.beam_phase))
        return (stripes * np.exp(-2.2 * self.yy)).astype(np.float32)

    def _vent(self, t: int) -> np.ndarray:
        return self._vent_at(self.xx, self.yy, t)

    def _vent_at(self, x: np.ndarray, y: np.ndarray, t: int) -> np.ndarray:
        flicker = 1.0 + 0.12 * math.sin(1.3 * t + self.flicker_phase)
        dist = np.sqrt(((x - self.vent_x) * 0.8) ** 2 + (1.12 - y) ** 2)
        return (flicker * np.exp(-dist / 0.28)).astype(np.float32)


# --- drawing ---------------------------------------------------------------------------------------------

def _composite(img: np.ndarray, alpha: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Paints N soft shapes, (N, H, W) coverage each with one (N, 3) colour, over ``img`` in order."""
    alpha, colors = np.asarray(alpha).reshape(-1, *img.shape[:2]), np.asarray(colors).reshape(-1, 3)
    for a, c in zip(alpha, colors, strict=True):
        img = img * (1 - a[..., None]) + a[..., None] * c
    return img


def _ellipse_coverage(scene: _Scene, xx: np.ndarray, yy: np.ndarray, cx: np.ndarray, cy: np.ndarray,
                      along: np.ndarray, across: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of N ellipses (semi-axes in frame-width units, rotated by angle) at points
    (xx, yy) broadcastable to (N, ...): one-pixel soft edges keep small moving shapes from flickering."""
    def col(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, np.float32)
        return v.reshape(v.shape + (1,) * (np.ndim(xx) - v.ndim))

    dx = xx - col(cx)
    dy = (yy - col(cy)) * (scene.h / scene.w)
    cos, sin = np.cos(col(angle)), np.sin(col(angle))
    u = dx * cos + dy * sin
    v = -dx * sin + dy * cos
    a, b = col(along), col(across)
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    # Distance to the rim is about (r - 1) * min semi-axis, in pixels.
    return np.clip(0.5 - (r - 1) * np.minimum(a, b) * scene.w, 0, 1).astype(np.float32)


def _ellipses(scene: _Scene, cx: np.ndarray, cy: np.ndarray, along: np.ndarray, across: np.ndarray,
              angle: np.ndarray) -> np.ndarray:
    """(N, H, W) coverage over the whole frame: for the few large shapes (bells, shells, wings)."""
    return _ellipse_coverage(scene, scene.xx[None], scene.yy[None], cx, cy, along, across, angle)


class _Patches:
    """K x K pixel windows around N points: many small shapes are drawn there instead of on whole frames."""

    def __init__(self, scene: _Scene, cx: np.ndarray, cy: np.ndarray, k: int) -> None:
        self.k = k
        self.x0 = np.floor(np.asarray(cx) * scene.w).astype(int) - k // 2
        self.y0 = np.floor(np.asarray(cy) * scene.h).astype(int) - k // 2
        offs = np.arange(k)
        self.ix = self.x0[:, None, None] + offs[None, None, :]  # (N, 1, K)
        self.iy = self.y0[:, None, None] + offs[None, :, None]  # (N, K, 1)
        self.xx = (self.ix + 0.5) / scene.w
        self.yy = (self.iy + 0.5) / scene.h

    def paint(self, img: np.ndarray, coverage: np.ndarray, colors: np.ndarray) -> np.ndarray:
        """Composites the (N, K, K) coverages with (N, 3) colours; overlaps blend by coverage weight."""
        h, w = img.shape[:2]
        k = self.k
        iy = np.broadcast_to(self.iy, coverage.shape) + k
        ix = np.broadcast_to(self.ix, coverage.shape) + k
        inside = (iy >= k) & (iy < h + k) & (ix >= k) & (ix < w + k)
        acc_a = np.zeros((h + 2 * k, w + 2 * k), np.float32)
        acc_c = np.zeros((h + 2 * k, w + 2 * k, 3), np.float32)
        cov = np.where(inside, coverage, 0)
        iy, ix = np.clip(iy, 0, h + 2 * k - 1), np.clip(ix, 0, w + 2 * k - 1)
        np.add.at(acc_a, (iy, ix), cov)
        np.add.at(acc_c, (iy, ix), cov[..., None] * np.asarray(colors, np.float32)[:, None, None, :])
        a = acc_a[k:-k, k:-k]
        c = acc_c[k:-k, k:-k] / np.maximum(a, 1e-6)[..., None]
        a = np.minimum(a, 1.0)[..., None]
        return img * (1 - a) + a * c


def _heading_angle(motion: str, rng: np.random.Generator) -> float:
    if motion == "still":
        return 0.0 if rng.uniform() < 0.5 else math.pi
    dx, dy = DIRECTIONS[motion]
    return math.atan2(dy, dx)


# How far a subject's path may sit off the frame's centre. Small on purpose: the reef model is a transformer
# with relative (RoPE) positions only, which learns *where* a subject goes from the prompt only when the prompt
# nearly fixes it; with subjects anywhere, a model this small regresses to empty water (measured: motion
# accuracy 16% with a spread of 0.08 and bubbles or specks spread over the whole frame).
PATH_SPREAD = 0.025


def _start(motion: str, speed: float, frames: int, rng: np.random.Generator,
           spread: float = PATH_SPREAD) -> np.ndarray:
    """Start so that the subject's path is centred in the frame."""
    d = np.asarray(DIRECTIONS[motion])
    return 0.5 - d * speed * (frames - 1) / 2 + rng.uniform(-spread, spread, 2)


def _bubbles(scene: _Scene, attrs: SceneAttributes, frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    n = int(rng.integers(10, 18))
    v0 = SPEED_PER_FRAME[attrs.speed]

    def rise(t: float) -> float:  # buoyancy minus drag: rising bubbles speed up (and grow as the pressure drops)
        return v0 * (0.45 * t + 0.55 * t * t / (frames - 1))

    # A plume: the bubbles rise together from one source, the cloud's path centred in the frame.
    centre = 0.5 + rng.uniform(-PATH_SPREAD, PATH_SPREAD, 2)
    x0 = centre[0] + rng.normal(0, 0.07, n)
    y0 = centre[1] + rise(frames - 1) / 2 + rng.normal(0, 0.09, n)
    r0 = rng.uniform(0.014, 0.032, n)
    phase = rng.uniform(0, 2 * math.pi, n)
    out = []
    for t in range(frames):
        y = y0 - rise(t)
        x = x0 + 0.012 * np.sin(0.9 * t + phase)
        r = r0 * (1.0 + 0.25 * (1 - np.clip(y, 0, 1)))
        img = scene.background(t)
        zero = np.zeros(n)
        patch = _Patches(scene, x, y, 2 * int(math.ceil(0.045 * scene.w)) + 3)
        ring = (_ellipse_coverage(scene, patch.xx, patch.yy, x, y, r, r, zero)
                - 0.75 * _ellipse_coverage(scene, patch.xx, patch.yy, x, y, r * 0.7, r * 0.7, zero))
        shine = _ellipse_coverage(scene, patch.xx, patch.yy, x - r * 0.35, y - r * 0.35, r * 0.3, r * 0.3, zero)
        col = scene.shade(np.full((n, 3), 1.0), x, y, t)
        img = patch.paint(img, ring * 0.9, col)
        img = patch.paint(img, shine * 0.9, np.minimum(col * 1.4 + 0.2, 1.0))
        out.append(img)
    return out


def _jellyfish(scene: _Scene, attrs: SceneAttributes, frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    n = 1
    speed = SPEED_PER_FRAME[attrs.speed]
    d = np.asarray(DIRECTIONS[attrs.motion])
    starts = _start(attrs.motion, speed, frames, rng)[None]
    size = rng.uniform(0.085, 0.11, n)
    albedo = np.array([rng.uniform(0.75, 1.0), rng.uniform(0.45, 0.7), rng.uniform(0.8, 1.0)], np.float32)
    phase = rng.uniform(0, 2 * math.pi, n)
    period = 8.0
    out = []
    pos = starts.copy()
    for t in range(frames):
        pulse = np.sin(2 * math.pi * t / period + phase)  # > 0: bell contracted, thrusting
        if t:
            # Jet propulsion: most of the travel happens while the bell contracts; average speed is `speed`.
            pos = pos + d[None] * speed * (1 + 0.8 * pulse)[:, None]
            pos = pos + (rng.normal(0, 0.001, pos.shape) if attrs.motion == "still" else 0)
        x, y = pos[:, 0], pos[:, 1]
        img = scene.background(t)
        width = size * (1 - 0.18 * pulse)
        height = size * (0.75 + 0.15 * pulse)
        bell = _ellipses(scene, x, y, width, height, np.zeros(n))
        lower = np.clip((scene.yy[None] - (y - 0.25 * height)[:, None, None]) * scene.h, 0, 1)
        bell = bell * (1 - 0.7 * lower)  # a dome: the bell's underside is open and faint
        col = scene.shade(np.repeat(albedo[None], n, 0), x, y, t)
        img = _composite(img, bell * 0.8, np.minimum(col * 1.3 + 0.05, 1.0))
        # Tentacles: five wavy strings of dots trailing below each bell.
        k_idx, j_idx = np.meshgrid(np.arange(5), np.arange(1, 7), indexing="ij")
        k_idx, j_idx = k_idx.ravel()[None], j_idx.ravel()[None]
        tx = (x[:, None] + (k_idx - 2) / 2.5 * width[:, None] * 0.8
              + 0.012 * np.sin(0.8 * t + j_idx * 0.9 + k_idx + phase[:, None])).ravel()
        ty = (y[:, None] + height[:, None] * 0.2 + j_idx * size[:, None] * 0.22).ravel()
        m = tx.size
        patch = _Patches(scene, tx, ty, 2 * int(math.ceil(0.013 * scene.w)) + 3)
        dots = _ellipse_coverage(scene, patch.xx, patch.yy, tx, ty, np.full(m, 0.007), np.full(m, 0.012),
                                 np.zeros(m))
        img = patch.paint(img, dots * 0.55, np.repeat(col, m // n, axis=0))
        out.append(img)
    return out


def _fish(scene: _Scene, attrs: SceneAttributes, frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    n = int(rng.integers(10, 17))
    speed = SPEED_PER_FRAME[attrs.speed]
    d = np.asarray(DIRECTIONS[attrs.motion])
    centre = _start(attrs.motion, speed, frames, rng)
    offsets = rng.normal(0, 0.08, (n, 2))
    heading = _heading_angle(attrs.motion, rng)
    albedo = np.array([[0.85, 0.88, 0.92], [1.0, 0.82, 0.25], [0.95, 0.55, 0.25]][rng.integers(3)], np.float32)
    phase = rng.uniform(0, 2 * math.pi, n)
    length = rng.uniform(0.034, 0.042)
    out = []
    for t in range(frames):
        # The school moves as one: every fish keeps its place in the formation, with a little weaving.
        c = centre + d * speed * t
        wobble = 0.006 * np.sin(0.7 * t + phase)
        x = c[0] + offsets[:, 0] + wobble * -math.sin(heading)
        y = c[1] + offsets[:, 1] + wobble * math.cos(heading)
        angle = np.full(n, heading) + 0.15 * np.sin(1.1 * t + phase) * (attrs.motion == "still")
        img = scene.background(t)
        patch = _Patches(scene, x, y, 2 * int(math.ceil(length * 2.6 * scene.w)) + 3)
        body = _ellipse_coverage(scene, patch.xx, patch.yy, x, y, np.full(n, length), np.full(n, length * 0.38),
                                 angle)
        tx, ty = x - np.cos(angle) * length * 1.15, y - np.sin(angle) * length * 1.15
        tail = _ellipse_coverage(scene, patch.xx, patch.yy, tx, ty, np.full(n, length * 0.3),
                                 np.full(n, length * 0.4), angle)
        col = scene.shade(np.repeat(albedo[None], n, 0), x, y, t)
        img = patch.paint(img, tail * 0.9, col * 0.8)
        img = patch.paint(img, body, col)
        out.append(img)
    return out


def _turtle(scene: _Scene, attrs: SceneAttributes, frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    speed = SPEED_PER_FRAME[attrs.speed]
    d = np.asarray(DIRECTIONS[attrs.motion])
    start = _start(attrs.motion, speed, frames, rng)
    heading = _heading_angle(attrs.motion, rng)
    shell = np.array([0.45, 0.5, 0.22], np.float32) * rng.uniform(0.85, 1.15)
    skin = np.array([0.62, 0.6, 0.38], np.float32)
    size = rng.uniform(0.12, 0.15)
    out = []
    for t in range(frames):
        x, y = start + d * speed * t
        img = scene.background(t)
        ca, sa = math.cos(heading), math.sin(heading)
        stroke = 0.5 * math.sin(0.6 * t)  # front flippers sweep back and forth: the paddling stroke
        parts = []
        for side in (-1, 1):
            for front, base in ((1, 0.55), (-1, 0.5)):
                ang = heading + side * (math.pi / 2 - front * (0.6 + (stroke if front > 0 else 0.3 * stroke)))
                fx = x + ca * size * 0.45 * front + math.cos(ang) * size * base * 1.2
                fy = y + sa * size * 0.45 * front + math.sin(ang) * size * base * 1.2
                parts.append((fx, fy, size * base * 0.7, size * 0.2, ang, skin))
        parts.append((x + ca * size * 1.05, y + sa * size * 1.05, size * 0.28, size * 0.22, heading, skin))
        parts.append((x, y, size, size * 0.78, heading, shell))
        parts.append((x, y, size * 0.55, size * 0.42, heading, shell * 1.35))  # lighter scutes on the shell
        arr = [np.asarray(v) for v in zip(*parts, strict=True)]
        alpha = _ellipses(scene, arr[0], arr[1], arr[2], arr[3], arr[4])
        col = scene.shade(np.stack(arr[5]), arr[0], arr[1], t)
        out.append(_composite(img, alpha, col))
    return out


def _ray(scene: _Scene, attrs: SceneAttributes, frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    speed = SPEED_PER_FRAME[attrs.speed]
    d = np.asarray(DIRECTIONS[attrs.motion])
    start = _start(attrs.motion, speed, frames, rng)
    heading = _heading_angle(attrs.motion, rng)
    albedo = np.array([0.2, 0.22, 0.3], np.float32) * rng.uniform(0.8, 1.2)
    span = rng.uniform(0.16, 0.2)
    out = []
    for t in range(frames):
        x, y = start + d * speed * t
        img = scene.background(t)
        flap = 1.0 + 0.12 * math.sin(0.7 * t)  # wings beat: the span and shading breathe
        ca, sa = math.cos(heading), math.sin(heading)
        dx = scene.xx - x
        dy = (scene.yy - y) * (scene.h / scene.w)
        u = dx * ca + dy * sa
        v = -dx * sa + dy * ca
        length = span * 0.55
        # A kite: pointed wings, a blunt head in front; |u|/length + |v|/span < 1 with a rounded front.
        r = np.abs(u) / length + np.abs(v) / (span * flap)
        body = np.clip(0.5 - (r - 1) * length * scene.w, 0, 1)
        tail = np.clip(0.5 - np.abs(v) * scene.w + 0.5, 0, 1) * ((u < -length * 0.5) & (u > -length * 2.0))
        alpha = np.stack([tail * 0.9, body]).astype(np.float32)
        col = scene.shade(np.stack([albedo, albedo * (1.1 + 0.3 * (flap - 1))]), np.array([x, x]),
                          np.array([y, y]), t)
        out.append(_composite(img, alpha, col))
    return out


def _particles(scene: _Scene, attrs: SceneAttributes, frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    n = int(rng.integers(40, 70))
    speed = SPEED_PER_FRAME[attrs.speed]
    d = np.asarray(DIRECTIONS[attrs.motion])
    # A cloud of silt drifting with the current; nearer (bigger) specks move faster than far ones: parallax.
    near = rng.uniform(0.6, 1.2, n)
    start = 0.5 + rng.uniform(-PATH_SPREAD, PATH_SPREAD, (1, 2)) + rng.normal(0, 0.13, (n, 2))
    radius = 0.009 + 0.006 * near
    albedo = np.full((n, 3), 0.95, np.float32) * np.array([1.0, 0.97, 0.85], np.float32)
    jitter = rng.normal(0, 0.0025, (frames, n, 2)).cumsum(0)
    out = []
    for t in range(frames):
        pos = start + d[None] * speed * near[:, None] * (t - (frames - 1) / 2) + jitter[t]
        x, y = pos[:, 0], pos[:, 1]
        img = scene.background(t)
        patch = _Patches(scene, x, y, 2 * int(math.ceil(0.016 * scene.w)) + 3)
        alpha = _ellipse_coverage(scene, patch.xx, patch.yy, x, y, radius, radius, np.zeros(n)) * 0.85
        out.append(patch.paint(img, alpha, scene.shade(albedo, x, y, t)))
    return out


_SUBJECT_RENDERERS = {"bubbles": _bubbles, "jellyfish": _jellyfish, "fish": _fish, "turtle": _turtle,
                      "ray": _ray, "particles": _particles}


def render_clip(attrs: SceneAttributes, *, frames: int = 17, height: int = 96, width: int = 96,
                seed: int = 0, subject: bool = True) -> np.ndarray:
    """Renders one clip as (frames, height, width, 3) uint8; the same attributes and seed give the same clip.

    ``subject=False`` gives the same clip without its subject (same water, light, current and grain): the
    difference of the two is what the subject adds, pixel for pixel.
    """
    rng = np.random.default_rng(seed)
    scene = _Scene(attrs.palette, height, width, rng)
    # The current carries the water's haze the way the subject goes; a bubble plume drags water up with it
    # (more slowly than the bubbles). Still water stays still.
    speed = SPEED_PER_FRAME[attrs.speed] * (0.5 if attrs.subject == "bubbles" else 1.0)
    scene.drift = tuple(v * speed for v in DIRECTIONS[attrs.motion])
    images = _SUBJECT_RENDERERS[attrs.subject](scene, attrs, frames, rng)  # drawn either way: same random stream
    video = np.stack(images if subject else [scene.background(t) for t in range(frames)])
    video = video + rng.normal(0, 0.008, video.shape).astype(np.float32)  # sensor grain, so nothing is flat
    return np.round(np.clip(video, 0, 1) * 255).astype(np.uint8)
