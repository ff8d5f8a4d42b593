"""The factor space of the procedural faces: what makes a person, and what changes between photos.

An *identity* is a point in a space of continuous factors (`IdentityFactors`): head shape, skin,
hair colour and style, eyes, brows, nose, mouth, ears, facial marks, facial hair and the habit of
wearing glasses. Each factor is drawn uniformly from its range with a key derived from
(seed, identity index) alone, so identity k is the same person in every dataset built with that
seed; with thousands of identities, some are genuinely close to each other.

An *image* adds nuisance factors (`NuisanceFactors`) drawn from (seed, identity, image index):
head pose, framing, lighting, expression, gaze, background, clothes, hat, glasses (worn with the
identity's probability), an occluding object, blur and sensor noise. A recogniser trained on
these images must learn the identity factors and ignore the nuisance ones.

Factors are plain dicts of arrays, so they can be edited (`{**identity, "beard": ...}`), stored in
a manifest, or passed through `jax.jit`.
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np

IdentityParams = dict[str, jax.Array]
"""Identity factors of a batch: one float32 array [N] per field of `IdentityFactors`."""

NuisanceParams = dict[str, jax.Array]
"""Nuisance factors of a batch: one float32 array [N] per field of `NuisanceFactors`."""

MAX_BLUR_AT_64 = 1.0
"""Largest blur sigma, in pixels of a 64-pixel image."""

_IDENTITY_STREAM = 0
_NUISANCE_STREAM = 1


@dataclasses.dataclass(frozen=True)
class IdentityFactors:
    """Uniform range (low, high) of every identity factor.

    Lengths on the face are in face units, the cranium half-width: the cheeks are at X = +-1 and
    the eyes near Y = 0. Colours are positions along a palette. A trait only some people have
    (grey hair, beard, moustache, mole, freckles, glasses) has a range starting below zero and is
    absent at values <= 0, so -low / (high - low) of the identities lack it.
    """

    # Head: cranium half-width (image units) and its length and depth relative to the width; a
    # jaw ellipsoid, as wide as jaw_width cranium half-widths, squares the lower face.
    head_width: tuple[float, float] = (0.47, 0.56)
    face_length: tuple[float, float] = (1.12, 1.36)
    head_depth: tuple[float, float] = (1.0, 1.2)
    jaw_width: tuple[float, float] = (0.62, 0.98)
    # Skin: tone from light to dark, undertone from olive to red, cheek redness.
    skin_tone: tuple[float, float] = (0.0, 1.0)
    skin_undertone: tuple[float, float] = (0.0, 1.0)
    cheek_blush: tuple[float, float] = (0.0, 1.0)
    # Hair colour: blond to black, redness, greyness.
    hair_darkness: tuple[float, float] = (0.0, 1.0)
    hair_redness: tuple[float, float] = (0.0, 1.0)
    hair_greyness: tuple[float, float] = (-3.0, 1.0)
    # Hair style on the hair shell (the unit sphere there, y up): height of the front hairline
    # (near 1 is bald on top), recession at the temples, sideways sweep of the fringe, how far
    # the hair falls behind and beside the face (> 1 is past the chin), thickness of the shell.
    hairline_height: tuple[float, float] = (0.15, 0.9)
    temple_recession: tuple[float, float] = (0.0, 0.5)
    hair_sweep: tuple[float, float] = (-0.35, 0.35)
    hair_length: tuple[float, float] = (-0.25, 2.0)
    hair_volume: tuple[float, float] = (0.04, 0.2)
    # Eyes: distance between centres, height, half-width, opening height / half-width, tilt of
    # the outer corners (radians), iris colour (blue, green, hazel, brown, dark brown), darkness.
    eye_spacing: tuple[float, float] = (0.62, 0.8)
    eye_height: tuple[float, float] = (-0.04, 0.1)
    eye_width: tuple[float, float] = (0.13, 0.18)
    eye_openness: tuple[float, float] = (0.35, 0.6)
    eye_tilt: tuple[float, float] = (-0.12, 0.2)
    iris_hue: tuple[float, float] = (0.0, 1.0)
    iris_darkness: tuple[float, float] = (0.0, 1.0)
    # Brows: gap above the eye, thickness, arch, slope from inner to outer end, length in eye
    # half-widths, darkness relative to the hair.
    brow_gap: tuple[float, float] = (0.13, 0.21)
    brow_thickness: tuple[float, float] = (0.035, 0.08)
    brow_arch: tuple[float, float] = (0.0, 0.07)
    brow_slope: tuple[float, float] = (-0.12, 0.14)
    brow_length: tuple[float, float] = (1.05, 1.45)
    brow_darkness: tuple[float, float] = (0.0, 1.0)
    # Nose: eye line to tip, half-width at the nostrils, how far the ridge stands out.
    nose_length: tuple[float, float] = (0.38, 0.54)
    nose_width: tuple[float, float] = (0.09, 0.16)
    nose_prominence: tuple[float, float] = (0.4, 1.0)
    # Mouth: gap below the nose tip, half-width, lip thicknesses, lip redness.
    mouth_gap: tuple[float, float] = (0.14, 0.24)
    mouth_width: tuple[float, float] = (0.2, 0.31)
    upper_lip: tuple[float, float] = (0.025, 0.055)
    lower_lip: tuple[float, float] = (0.035, 0.075)
    lip_redness: tuple[float, float] = (0.0, 1.0)
    # Ears: size and angle away from the head (radians).
    ear_size: tuple[float, float] = (0.8, 1.25)
    ear_angle: tuple[float, float] = (0.3, 0.85)
    # Facial marks: a mole (centre, radius), freckle density, and the seed of the freckle and
    # stubble patterns.
    mole_x: tuple[float, float] = (-0.75, 0.75)
    mole_y: tuple[float, float] = (-0.9, 0.2)
    mole_radius: tuple[float, float] = (-0.04, 0.035)
    freckles: tuple[float, float] = (-2.0, 1.0)
    skin_pattern: tuple[float, float] = (0.0, 1.0)
    # Facial hair density.
    beard: tuple[float, float] = (-1.5, 1.0)
    moustache: tuple[float, float] = (-1.5, 1.0)
    # Glasses: probability of wearing them in a given image, frame size and darkness.
    glasses_probability: tuple[float, float] = (-1.0, 1.0)
    glasses_size: tuple[float, float] = (1.35, 1.75)
    glasses_darkness: tuple[float, float] = (0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class NuisanceFactors:
    """Uniform range (low, high) of every per-image nuisance factor.

    Angles are in radians, positions in image coordinates. Expression and accessory factors are
    clipped at 0 by the renderer, so a range starting below zero makes their absence common.
    """

    # Pose (positive yaw turns the face towards the image's right) and framing.
    yaw: tuple[float, float] = (-0.75, 0.75)
    pitch: tuple[float, float] = (-0.3, 0.3)
    roll: tuple[float, float] = (-0.25, 0.25)
    scale: tuple[float, float] = (0.88, 1.1)
    shift_x: tuple[float, float] = (-0.07, 0.07)
    shift_y: tuple[float, float] = (-0.07, 0.07)
    # Lighting: direction (azimuth 0 = from the camera, > 0 from the image's right; elevation
    # > 0 from above), colour temperature, intensity, ambient fraction, camera exposure.
    light_azimuth: tuple[float, float] = (-1.2, 1.2)
    light_elevation: tuple[float, float] = (-0.2, 0.9)
    light_warmth: tuple[float, float] = (0.0, 1.0)
    light_intensity: tuple[float, float] = (0.9, 1.25)
    ambient: tuple[float, float] = (0.3, 0.6)
    exposure: tuple[float, float] = (0.85, 1.15)
    # Expression and gaze.
    smile: tuple[float, float] = (-0.6, 1.0)
    mouth_open: tuple[float, float] = (-1.5, 1.0)
    brow_raise: tuple[float, float] = (-0.6, 1.0)
    eye_closure: tuple[float, float] = (-3.0, 1.0)
    gaze_x: tuple[float, float] = (-1.0, 1.0)
    gaze_y: tuple[float, float] = (-1.0, 1.0)
    # Background: two colours blended along a direction, times a wavy texture (cycles across
    # the image, strength, phase).
    background_red_a: tuple[float, float] = (0.05, 0.95)
    background_green_a: tuple[float, float] = (0.05, 0.95)
    background_blue_a: tuple[float, float] = (0.05, 0.95)
    background_red_b: tuple[float, float] = (0.05, 0.95)
    background_green_b: tuple[float, float] = (0.05, 0.95)
    background_blue_b: tuple[float, float] = (0.05, 0.95)
    background_angle: tuple[float, float] = (-math.pi, math.pi)
    background_texture: tuple[float, float] = (-0.1, 0.12)
    background_frequency: tuple[float, float] = (0.5, 2.5)
    background_phase: tuple[float, float] = (0.0, 1.0)
    # Clothes colour.
    clothes_red: tuple[float, float] = (0.05, 0.9)
    clothes_green: tuple[float, float] = (0.05, 0.9)
    clothes_blue: tuple[float, float] = (0.05, 0.9)
    # Accessories: a hat (larger covers more), glasses (worn when glasses_draw is below the
    # identity's glasses_probability) and tinted lenses.
    hat: tuple[float, float] = (-5.0, 1.0)
    hat_red: tuple[float, float] = (0.05, 0.9)
    hat_green: tuple[float, float] = (0.05, 0.9)
    hat_blue: tuple[float, float] = (0.05, 0.9)
    glasses_draw: tuple[float, float] = (0.0, 1.0)
    lens_tint: tuple[float, float] = (-3.0, 1.0)
    # An occluding bar (a hand, a microphone): size, centre, orientation, shade.
    occluder: tuple[float, float] = (-6.0, 1.0)
    occluder_x: tuple[float, float] = (-0.6, 0.6)
    occluder_y: tuple[float, float] = (-0.8, 0.4)
    occluder_angle: tuple[float, float] = (0.0, math.pi)
    occluder_shade: tuple[float, float] = (0.0, 1.0)
    # Camera: Gaussian blur (sigma in pixels of a 64-pixel image), sensor noise (standard
    # deviation in [0, 1] intensity units) and the seed of its pattern.
    blur: tuple[float, float] = (-1.5, MAX_BLUR_AT_64)
    noise: tuple[float, float] = (0.0, 0.03)
    noise_pattern: tuple[float, float] = (0.0, 1.0)


IDENTITY_FACTORS = IdentityFactors()
"""The identity factor ranges the faces are drawn from."""
NUISANCE_FACTORS = NuisanceFactors()
"""The nuisance factor ranges the images are drawn from."""

CANONICAL_NUISANCE: dict[str, float] = {
    **{field.name: 0.0 for field in dataclasses.fields(NuisanceFactors)},
    "scale": 1.0,
    "light_elevation": 0.35,
    "light_warmth": 0.5,
    "light_intensity": 1.0,
    "ambient": 0.45,
    "exposure": 1.0,
    "background_red_a": 0.6,
    "background_green_a": 0.62,
    "background_blue_a": 0.65,
    "background_red_b": 0.6,
    "background_green_b": 0.62,
    "background_blue_b": 0.65,
    "clothes_red": 0.3,
    "clothes_green": 0.32,
    "clothes_blue": 0.4,
    "glasses_draw": 1.0,
    "hat": -1.0,
    "occluder": -1.0,
    "blur": -1.0,
}
"""A frontal, evenly lit, neutral mugshot on a plain grey background, without hat, occluder,
blur or noise; glasses only on identities that always wear them."""


def _draw_factors(
    key: jax.Array, ranges: IdentityFactors | NuisanceFactors
) -> dict[str, jax.Array]:
    """One uniform draw per factor, keyed by the factor's name rather than its position, so that
    adding a factor leaves every other factor of every face unchanged."""
    draws = {}
    for field in dataclasses.fields(ranges):
        low, high = getattr(ranges, field.name)
        factor_key = jax.random.fold_in(key, zlib.crc32(field.name.encode()) & 0x7FFFFFFF)
        draws[field.name] = jax.random.uniform(factor_key, minval=low, maxval=high)
    return draws


@jax.jit
def _sample_identities(seed: jax.Array, identity_ids: jax.Array) -> IdentityParams:
    stream = jax.random.fold_in(jax.random.key(seed), _IDENTITY_STREAM)
    return jax.vmap(lambda i: _draw_factors(jax.random.fold_in(stream, i), IDENTITY_FACTORS))(
        identity_ids
    )


@jax.jit
def _sample_nuisance(
    seed: jax.Array, identity_ids: jax.Array, image_ids: jax.Array
) -> NuisanceParams:
    stream = jax.random.fold_in(jax.random.key(seed), _NUISANCE_STREAM)

    def draw(identity_id, image_id):
        key = jax.random.fold_in(jax.random.fold_in(stream, identity_id), image_id)
        return _draw_factors(key, NUISANCE_FACTORS)

    return jax.vmap(draw)(identity_ids, image_ids)


def check_seed(seed: int) -> np.uint32:
    """The seed as uint32; raises ValueError unless it is an integer in [0, 2**32)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return np.uint32(seed)


def check_ids(name: str, ids) -> np.ndarray:
    """Identity or image indices as int32 [N]; raises ValueError naming `name` unless they are a
    1-D array of integers in [0, 2**31)."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(
            f"{name} must be a 1-D array of integers, got dtype {ids.dtype} and shape {ids.shape}"
        )
    if ids.size and (ids.min() < 0 or ids.max() >= 2**31):
        raise ValueError(f"{name} must lie in [0, 2**31), got values in [{ids.min()}, {ids.max()}]")
    return ids.astype(np.int32)


def check_image_ids(identity_ids, image_ids) -> tuple[np.ndarray, np.ndarray]:
    """`check_ids` of both, which must also have the same shape."""
    identity_ids = check_ids("identity_ids", identity_ids)
    image_ids = check_ids("image_ids", image_ids)
    if identity_ids.shape != image_ids.shape:
        raise ValueError(
            "identity_ids and image_ids must have the same shape, got "
            f"{identity_ids.shape} and {image_ids.shape}"
        )
    return identity_ids, image_ids


def sample_identities(seed: int, identity_ids) -> IdentityParams:
    """Identity factors of `identity_ids` [N]; each identity's a pure function of (seed, index)."""
    return _sample_identities(check_seed(seed), check_ids("identity_ids", identity_ids))


def sample_nuisance(seed: int, identity_ids, image_ids) -> NuisanceParams:
    """Nuisance factors of the images (identity_ids[n], image_ids[n]) [N]; each image's a pure
    function of (seed, identity index, image index)."""
    identity_ids, image_ids = check_image_ids(identity_ids, image_ids)
    return _sample_nuisance(check_seed(seed), identity_ids, image_ids)


def canonical_nuisance(batch_size: int) -> NuisanceParams:
    """`CANONICAL_NUISANCE` for `batch_size` images, to render identities comparably."""
    return {
        name: jnp.full((batch_size,), value, jnp.float32)
        for name, value in CANONICAL_NUISANCE.items()
    }
