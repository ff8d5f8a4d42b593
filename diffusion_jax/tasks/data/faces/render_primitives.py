"""Primitives of the procedural face renderer: anti-aliased shapes, cheap smooth functions,
compositing, and closed-form ray casting of quadrics.

Vectors and colours are arrays [3, H, W], or [3, 1, 1] when constant over the image. A shape is a
signed distance d to its outline (negative inside) that becomes the covered fraction of a pixel,
clip(1/2 - d / pixel, 0, 1): edges are anti-aliased at any resolution without supersampling.
On CPU, XLA's sine and exponential cost 25 to 200 multiplies, so the bumps, waves and hash here are
polynomial or integer arithmetic.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

FAR = -1e3
"""Depth given to rays that miss a surface (the camera looks from +z, larger depth is nearer)."""


def vec(*components) -> jax.Array:
    """A constant vector or colour [3, 1, 1] from three scalars."""
    return jnp.stack([jnp.asarray(c, jnp.float32) for c in components])[:, None, None]


def dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """a . b over the leading 3-axis."""
    # Written out: a reduction over the 3-axis would cut XLA's elementwise fusion.
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def normalise(vector: jax.Array) -> jax.Array:
    """vector / |vector| over the leading 3-axis."""
    return vector * jax.lax.rsqrt(dot(vector, vector) + 1e-12)


def hypot(x: jax.Array, y: jax.Array) -> jax.Array:
    """sqrt(x^2 + y^2), without the overflow guard of jnp.hypot (our values are small)."""
    return jnp.sqrt(x * x + y * y)


def coverage(signed_distance: jax.Array, pixel: jax.Array | float) -> jax.Array:
    """Fraction of a pixel of width `pixel` inside a shape, given the signed distance of its
    centre to the outline (negative inside): a box filter of the edge."""
    return jnp.clip(0.5 - signed_distance * (1.0 / pixel), 0.0, 1.0)


def smoothstep(edge0: jax.Array | float, edge1: jax.Array | float, x: jax.Array) -> jax.Array:
    """Hermite step 3t^2 - 2t^3 of t = (x - edge0) / (edge1 - edge0) clipped to [0, 1]."""
    t = jnp.clip((x - edge0) * (1.0 / (edge1 - edge0)), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def bump(squared_radius: jax.Array) -> jax.Array:
    """(1 - r^2)^2 inside the unit disc, 0 outside: a Gaussian-like blob without the exp."""
    return jnp.square(jnp.maximum(1.0 - squared_radius, 0.0))


def wave(x: jax.Array) -> jax.Array:
    """A cosine-like wave of period 1 in [-1, 1] (a smoothstepped triangle wave)."""
    triangle = jnp.abs(2.0 * (x - jnp.floor(x)) - 1.0)
    return 2.0 * triangle * triangle * (3.0 - 2.0 * triangle) - 1.0


def integer_hash(*integers: jax.Array) -> jax.Array:
    """Pseudo-random float in [0, 1) per tuple of integers (chained lowbias32 integer hash)."""
    state = jnp.uint32(0x9E3779B9)
    for value in integers:
        state = state ^ value.astype(jnp.int32).astype(jnp.uint32)
        state = (state ^ (state >> 16)) * jnp.uint32(0x7FEB352D)
        state = (state ^ (state >> 15)) * jnp.uint32(0x846CA68B)
        state = state ^ (state >> 16)
    return (state >> 8).astype(jnp.float32) * (1.0 / 2**24)


def ellipse_distance(
    x: jax.Array, y: jax.Array, radius_x: jax.Array | float, radius_y: jax.Array | float
) -> jax.Array:
    """Approximate signed distance to the ellipse (x/rx)^2 + (y/ry)^2 = 1: k0 (k0 - 1) / k1 with
    k0 = |(x/rx, y/ry)| and k1 = |(x/rx^2, y/ry^2)|; exact on the axes."""
    x_scaled, y_scaled = x * (1.0 / radius_x), y * (1.0 / radius_y)
    k0 = hypot(x_scaled, y_scaled)
    k1 = hypot(x_scaled * (1.0 / radius_x), y_scaled * (1.0 / radius_y))
    return k0 * (k0 - 1.0) / (k1 + 1e-6)


def over(base: jax.Array, colour: jax.Array, alpha: jax.Array) -> jax.Array:
    """`colour` composited over `base` with opacity `alpha`."""
    return base + (colour - base) * alpha


def mix(a: jax.Array, b: jax.Array, t) -> jax.Array:
    """Linear interpolation a + (b - a) t."""
    return a + (b - a) * t


def palette(position: jax.Array, colours: tuple[tuple[float, float, float], ...]) -> jax.Array:
    """Piecewise-linear colour at `position` in [0, 1] along evenly spaced `colours`."""
    table = jnp.asarray(colours, jnp.float32)
    scaled = jnp.clip(position, 0.0, 1.0) * (len(colours) - 1)
    index = jnp.minimum(jnp.floor(scaled).astype(jnp.int32), len(colours) - 2)
    return mix(table[index], table[index + 1], scaled - index)[:, None, None]


def rotation(yaw: jax.Array, pitch: jax.Array, roll: jax.Array) -> jax.Array:
    """R = R_z(roll) R_x(pitch) R_y(yaw), head-local to world."""
    cy, sy = jnp.cos(yaw), jnp.sin(yaw)
    cp, sp = jnp.cos(pitch), jnp.sin(pitch)
    cr, sr = jnp.cos(roll), jnp.sin(roll)
    one, zero = jnp.ones_like(yaw), jnp.zeros_like(yaw)
    r_yaw = jnp.array([[cy, zero, sy], [zero, one, zero], [-sy, zero, cy]])
    r_pitch = jnp.array([[one, zero, zero], [zero, cp, -sp], [zero, sp, cp]])
    r_roll = jnp.array([[cr, -sr, zero], [sr, cr, zero], [zero, zero, one]])
    return r_roll @ r_pitch @ r_yaw


@dataclasses.dataclass(frozen=True)
class Rays:
    """Every pixel's viewing ray in the head frame: point(t) = origin + t direction, t being the
    world depth (larger is nearer the camera); origin_du, origin_dv = d origin / d(u, v)."""

    origin: jax.Array
    direction: jax.Array
    origin_du: jax.Array
    origin_dv: jax.Array
    pixel: float

    def point(self, t: jax.Array) -> jax.Array:
        return self.origin + t * self.direction


@dataclasses.dataclass(frozen=True)
class Hit:
    """A quadric's anti-aliased coverage and the depths where each ray enters and leaves it."""

    coverage: jax.Array
    t_front: jax.Array
    t_back: jax.Array


def cast_quadric(rays: Rays, centre: jax.Array, inverse_radii: jax.Array) -> Hit:
    """Intersects the rays with |(p - centre) * inverse_radii| = 1: an ellipsoid, or an elliptic
    cylinder where an inverse radius is 0. Rays that miss get the depth of their closest approach,
    so anti-aliased edge pixels still have a surface point to colour.

    Coverage uses the first-order distance to the projected outline f(u, v) = 1, with f = |p|^2
    and p = s0 - (s0.ds / |ds|^2) ds the ray's closest approach to the centre: since
    grad f = 2 (p.s_u, p.s_v),

        distance = (sqrt f - 1) / |grad sqrt f| = (f - sqrt f) / |(p.s_u, p.s_v)|.
    """
    unit_origin = (rays.origin - centre) * inverse_radii
    unit_direction = rays.direction * inverse_radii
    inverse_a = 1.0 / dot(unit_direction, unit_direction)
    b = dot(unit_origin, unit_direction)
    c = dot(unit_origin, unit_origin) - 1.0
    root = jnp.sqrt(jnp.maximum(b * b - c / inverse_a, 0.0))
    closest = unit_origin - (b * inverse_a) * unit_direction
    f = dot(closest, closest)
    gradient = hypot(
        dot(closest, rays.origin_du * inverse_radii), dot(closest, rays.origin_dv * inverse_radii)
    )
    distance = (f - jnp.sqrt(f)) / (gradient + 1e-6)
    return Hit(
        coverage=coverage(distance, rays.pixel),
        t_front=(root - b) * inverse_a,
        t_back=(-root - b) * inverse_a,
    )


def lambert(normal: jax.Array, light: jax.Array, ambient: jax.Array) -> jax.Array:
    """ambient + (1 - ambient) max(n.l, 0) for a unit light direction and a normal of any length."""
    cosine = dot(normalise(normal), light)
    return ambient + (1.0 - ambient) * jnp.maximum(cosine, 0.0)
