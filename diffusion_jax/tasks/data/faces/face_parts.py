"""Facial parts of the procedural faces, painted as functions of face coordinates.

Face coordinates (x, y) are the head-local surface point divided by the cranium half-width: the
cheeks are at x = +-1, the eyes near y = 0, y is up. They are a frontal projection of the surface,
so the parts move over the head and foreshorten as it turns. Each `paint_*` function composites a
part over the albedo [3, H, W]; `nose_slope` bends the normal instead. Paired parts (eyes, brows,
nostrils, rims) are drawn once in mirrored coordinates (|x|, y).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from diffusion_jax.tasks.data.faces.render_primitives import (
    bump,
    coverage,
    ellipse_distance,
    hypot,
    integer_hash,
    mix,
    over,
    palette,
    smoothstep,
    vec,
)

Factors = Mapping[str, jax.Array]
"""One face's identity (`face`) or nuisance (`scene`) factors, scalars by name (face_factors)."""

SKIN_PALETTE = (
    (0.97, 0.82, 0.72),
    (0.88, 0.68, 0.54),
    (0.74, 0.52, 0.38),
    (0.54, 0.36, 0.24),
    (0.34, 0.22, 0.15),
)
_HAIR_PALETTE = (
    (0.9, 0.78, 0.52),
    (0.62, 0.46, 0.28),
    (0.36, 0.24, 0.14),
    (0.16, 0.11, 0.08),
    (0.05, 0.04, 0.04),
)
_IRIS_PALETTE = (
    (0.35, 0.52, 0.72),
    (0.36, 0.52, 0.38),
    (0.5, 0.42, 0.22),
    (0.38, 0.22, 0.1),
    (0.2, 0.11, 0.05),
)


def skin_colour(face: Factors) -> jax.Array:
    """RGB [3, 1, 1] along the skin palette, shifted by the undertone."""
    return palette(face["skin_tone"], SKIN_PALETTE) + vec(0.04, -0.01, -0.03) * (
        face["skin_undertone"] - 0.5
    )


def hair_colour(face: Factors) -> jax.Array:
    """RGB [3, 1, 1] along the hair palette, reddened and greyed."""
    colour = palette(face["hair_darkness"], _HAIR_PALETTE)
    colour = mix(
        colour,
        vec(0.55, 0.2, 0.08) * (1.0 - 0.6 * face["hair_darkness"]),
        0.55 * face["hair_redness"],
    )
    return mix(colour, vec(0.78, 0.78, 0.76), jnp.clip(face["hair_greyness"], 0.0, 1.0))


@dataclasses.dataclass(frozen=True)
class FaceCoordinates:
    """Face coordinates of the visible head surface, in cranium half-widths (x to the image's
    right when frontal, y up); `front` fades features out towards the sides; `pixel` is one
    image pixel in face units."""

    x: jax.Array
    y: jax.Array
    front: jax.Array
    pixel: jax.Array


def nose_tip_height(face: Factors) -> jax.Array:
    """y of the nose tip: nose_length below the eyes."""
    return face["eye_height"] - face["nose_length"]


def mouth_height(face: Factors) -> jax.Array:
    """y of the mouth line (closed, neutral): mouth_gap below the nose tip."""
    return nose_tip_height(face) - face["mouth_gap"]


def paint_skin_marks(
    albedo: jax.Array, skin: jax.Array, face: Factors, at: FaceCoordinates
) -> jax.Array:
    """Cheek blush, freckles (lattice cells picked by a per-person hash) and a mole."""
    x, y = at.x, at.y
    cheeks = bump(((jnp.abs(x) - 0.48) * 3.0) ** 2 + ((y + 0.42) * 3.0) ** 2)
    albedo = over(
        albedo, skin * vec(1.08, 0.82, 0.82), 0.5 * face["cheek_blush"] * cheeks * at.front
    )
    pattern = face["skin_pattern"] * 2**20
    freckled = integer_hash(jnp.floor(x * 14.0), jnp.floor(y * 14.0), pattern) < 0.35
    area = bump((x * 1.2) ** 2 + ((y + 0.3) * 2.6) ** 2)
    freckle_alpha = 0.55 * jnp.clip(face["freckles"], 0.0, 1.0) * freckled * area * at.front
    albedo = over(albedo, skin * vec(0.72, 0.55, 0.45), freckle_alpha)
    mole = hypot(x - face["mole_x"], y - face["mole_y"]) - face["mole_radius"]
    return over(
        albedo,
        vec(0.25, 0.14, 0.1),
        coverage(mole, at.pixel) * (face["mole_radius"] > 0) * at.front,
    )


def paint_facial_hair(
    albedo: jax.Array, hair: jax.Array, face: Factors, at: FaceCoordinates
) -> jax.Array:
    """Beard below the mouth and along the jaw, moustache between nose and upper lip, both
    stubbly (a per-person hash over fine cells)."""
    x, y = at.x, at.y
    mouth_y, nose_tip_y = mouth_height(face), nose_tip_height(face)
    stubble = 0.7 + 0.3 * integer_hash(
        jnp.floor(x * 40.0), jnp.floor(y * 40.0), face["skin_pattern"] * 2**20 + 1
    )
    beard_top = (
        mouth_y - 0.06 + (nose_tip_y - mouth_y) * jnp.square(jnp.clip(jnp.abs(x) * 1.1, 0.0, 1.0))
    )
    beard = coverage(y - beard_top, 0.06) * coverage(jnp.abs(x) - 0.95, 0.1)
    moustache_y = 0.5 * (nose_tip_y + mouth_y) - 0.01
    moustache = coverage(
        ellipse_distance(x, y - moustache_y, face["mouth_width"] + 0.04, 0.045), 0.04
    )
    density = jnp.maximum(
        beard * jnp.clip(face["beard"], 0.0, 1.0), moustache * jnp.clip(face["moustache"], 0.0, 1.0)
    )
    return over(albedo, hair * 0.9, 0.85 * density * stubble * at.front)


def paint_brows(
    albedo: jax.Array, hair: jax.Array, face: Factors, scene: Factors, at: FaceCoordinates
) -> jax.Array:
    """A band above each eye, tapering outwards, arched and sloped, raised by surprise."""
    colour = mix(hair, vec(0.06, 0.05, 0.04), face["brow_darkness"])
    lift = 0.06 * jnp.clip(scene["brow_raise"], 0.0, 1.0) - 0.02 * jnp.clip(
        scene["smile"], 0.0, 1.0
    )
    half_length = face["brow_length"] * face["eye_width"]
    along = (jnp.abs(at.x) - face["eye_spacing"] / 2) * (
        1.0 / half_length
    )  # -1 at the inner end, +1 outer.
    centre_y = face["eye_height"] + face["brow_gap"] + lift
    centre_y += face["brow_arch"] * (1.0 - along * along) + face["brow_slope"] * along * half_length
    half_thickness = 0.5 * face["brow_thickness"] * (1.15 - 0.35 * along)
    distance = jnp.maximum(
        jnp.abs(at.y - centre_y) - half_thickness, (jnp.abs(along) - 1.0) * half_length
    )
    alpha = coverage(distance, at.pixel)
    return over(albedo, colour, 0.9 * alpha * at.front)


def paint_eyes(
    albedo: jax.Array, skin: jax.Array, face: Factors, scene: Factors, at: FaceCoordinates
) -> jax.Array:
    """Almond openings between two parabolic lids (narrowed by closure and smiling), an iris and
    pupil following the gaze, a lash line, and the shadowed skin of the eye socket."""
    closure = jnp.clip(scene["eye_closure"], 0.0, 1.0) + 0.25 * jnp.clip(scene["smile"], 0.0, 1.0)
    openness = face["eye_openness"] * jnp.clip(1.0 - closure, 0.0, 1.0)
    half_width = face["eye_width"]
    iris_colour = palette(face["iris_hue"], _IRIS_PALETTE) * (1.0 - 0.5 * face["iris_darkness"])
    iris_x, iris_y = 0.35 * half_width * scene["gaze_x"], 0.12 * half_width * scene["gaze_y"]
    # In mirrored coordinates (|x|, y) both eyes are one; only the gaze is not mirrored.
    dx, dy = jnp.abs(at.x) - face["eye_spacing"] / 2, at.y - face["eye_height"]
    socket = bump((dx * (0.5 / half_width)) ** 2 + ((dy - 0.03) * (0.8 / half_width)) ** 2)
    albedo = over(albedo, skin * vec(0.72, 0.62, 0.6), 0.5 * socket * at.front)
    cos_tilt, sin_tilt = jnp.cos(face["eye_tilt"]), jnp.sin(face["eye_tilt"])
    ex, ey = dx * cos_tilt + dy * sin_tilt, dy * cos_tilt - dx * sin_tilt
    lid_profile = jnp.maximum(1.0 - jnp.square(ex * (1.0 / half_width)), 0.0)
    upper, lower = (
        0.62 * openness * half_width * lid_profile,
        -0.38 * openness * half_width * lid_profile,
    )
    opening = jnp.maximum(jnp.maximum(ey - upper, lower - ey), jnp.abs(ex) - half_width)
    iris_distance = hypot(ex - jnp.sign(at.x) * iris_x, ey - iris_y)
    eyeball = over(
        vec(0.92, 0.9, 0.86), iris_colour, coverage(iris_distance - 0.45 * half_width, at.pixel)
    )
    eyeball = over(
        eyeball, vec(0.03, 0.03, 0.03), coverage(iris_distance - 0.18 * half_width, at.pixel)
    )
    albedo = over(albedo, eyeball, coverage(opening, at.pixel) * at.front)
    lashes = jnp.maximum(jnp.abs(ey - upper) - 0.018, jnp.abs(ex) - 1.05 * half_width)
    return over(albedo, vec(0.08, 0.06, 0.05), 0.9 * coverage(lashes, at.pixel) * at.front)


def nose_slope(face: Factors, at: FaceCoordinates) -> tuple[jax.Array, jax.Array]:
    """Gradient (dh/dx, dh/dy) of the nose height field h = height * ridge(x) * rise(a): a ridge
    bump((x / w)^2) across, rising linearly along a = (eye height - y) / nose length from the eyes
    (a = 0) to the tip (a = 1) and falling off as bump(((a - 1) / 0.15)^2) below it."""
    half_width = face["nose_width"] * (
        0.55 + 0.45 * smoothstep(face["eye_height"], nose_tip_height(face), at.y)
    )
    across = at.x * (1.0 / half_width)
    ridge = bump(across * across)
    d_ridge = -4.0 * jnp.maximum(1.0 - across * across, 0.0) * across * (1.0 / half_width)
    along = (face["eye_height"] - at.y) * (1.0 / face["nose_length"])
    below_tip = (along - 1.0) * (1.0 / 0.15)
    rise = jnp.where(along > 1.0, bump(below_tip * below_tip), jnp.clip(along, 0.0, 1.0))
    d_rise_d_along = jnp.where(
        along > 1.0,
        -4.0 * jnp.maximum(1.0 - below_tip * below_tip, 0.0) * below_tip / 0.15,
        (along > 0.0) * 1.0,
    )
    height = 0.12 * face["nose_prominence"] * at.front
    return height * d_ridge * rise, -height * ridge * d_rise_d_along * (1.0 / face["nose_length"])


def paint_nose(albedo: jax.Array, skin: jax.Array, face: Factors, at: FaceCoordinates) -> jax.Array:
    """A slightly redder tip and two dark nostrils; the shape itself comes from `nose_slope`."""
    tip_y = nose_tip_height(face)
    tip = bump((at.x * 12.0) ** 2 + ((at.y - tip_y) * 16.0) ** 2)
    albedo = over(albedo, skin * vec(1.05, 0.9, 0.88), 0.35 * tip * at.front)
    nostrils = ellipse_distance(
        jnp.abs(at.x) - 0.5 * face["nose_width"], at.y - tip_y + 0.035, 0.045, 0.022
    )
    return over(albedo, skin * 0.35, 0.85 * coverage(nostrils, at.pixel) * at.front)


def paint_mouth(
    albedo: jax.Array, skin: jax.Array, face: Factors, scene: Factors, at: FaceCoordinates
) -> jax.Array:
    """Lips above and below a mouth line that curves up and widens with a smile; an open mouth
    parts them, showing teeth when also smiling."""
    smile = jnp.clip(scene["smile"], 0.0, 1.0)
    opening = 0.09 * jnp.clip(scene["mouth_open"], 0.0, 1.0)
    half_width = face["mouth_width"] * (1.0 + 0.15 * smile)
    across = at.x * (1.0 / half_width)
    profile = jnp.sqrt(jnp.maximum(1.0 - across * across, 0.0))
    outside = (jnp.abs(across) - 1.0) * half_width
    line = mouth_height(face) + 0.07 * smile * across * across
    gap_top, gap_bottom = line + 0.35 * opening * profile, line - 0.65 * opening * profile
    lips = jnp.maximum(
        jnp.maximum(
            at.y - gap_top - face["upper_lip"] * profile,
            gap_bottom - face["lower_lip"] * profile - at.y,
        ),
        outside,
    )
    lip_colour = mix(skin * vec(0.92, 0.72, 0.72), vec(0.7, 0.25, 0.28), 0.6 * face["lip_redness"])
    albedo = over(albedo, lip_colour, coverage(lips, at.pixel) * at.front)
    gap = jnp.maximum(jnp.maximum(at.y - gap_top, gap_bottom - at.y), outside)
    teeth = smile * coverage(at.y - (gap_top - 0.4 * (gap_top - gap_bottom)), at.pixel)
    inside = over(vec(0.25, 0.07, 0.08), vec(0.9, 0.88, 0.8), teeth)
    line_alpha = 0.6 * coverage(jnp.maximum(jnp.abs(at.y - line) - 0.006, outside), at.pixel)
    return over(albedo, inside, jnp.maximum(coverage(gap, at.pixel), line_alpha) * at.front)


def paint_glasses(
    albedo: jax.Array, face: Factors, scene: Factors, at: FaceCoordinates
) -> jax.Array:
    """Two rims, a bridge and the temples (drawn on the surface, so they wrap round the head),
    lenses optionally tinted."""
    worn = scene["glasses_draw"] < face["glasses_probability"]
    rim_half_width = face["glasses_size"] * face["eye_width"]
    mirrored_x = jnp.abs(at.x)
    rim = ellipse_distance(
        mirrored_x - face["eye_spacing"] / 2,
        at.y - face["eye_height"] + 0.02,
        rim_half_width,
        0.75 * rim_half_width,
    )
    temple = jnp.maximum(
        jnp.abs(at.y - face["eye_height"] - 0.05) - 0.016,
        face["eye_spacing"] / 2 + rim_half_width - mirrored_x,
    )
    frame = coverage(jnp.minimum(jnp.abs(rim) - 0.018, temple), at.pixel)
    lens = coverage(rim, at.pixel)
    bridge = jnp.maximum(
        jnp.abs(at.y - face["eye_height"] - 0.04) - 0.016, mirrored_x - face["eye_spacing"] / 2
    )
    frame = jnp.maximum(frame, coverage(bridge, at.pixel))
    albedo = over(
        albedo, 0.25 * albedo, 0.8 * jnp.clip(scene["lens_tint"], 0.0, 1.0) * lens * worn * at.front
    )
    frame_colour = vec(0.6, 0.55, 0.5) * (1.0 - 0.9 * face["glasses_darkness"])
    return over(albedo, frame_colour, frame * worn * at.front)
