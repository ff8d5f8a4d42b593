"""Procedural faces: identities as parameters of a 3D head, rendered by analytic ray casting.

What is drawn is `face_factors` (identity and nuisance factors, sampled from a seed); this module
places the head, hair, ears, body and accessories in a scene and renders it.

Geometry. Image coordinates (u, v) span [-1, 1], v up; the camera looks down -z with an
orthographic projection. The head lives in a head-local frame (x to the image's right when
frontal, y up, z out of the face) and is placed in the world by

    world = R_z(roll) R_x(pitch) R_y(yaw) local + centre,

so each pixel's viewing ray is a straight line in the head frame. The head is the union of two
ellipsoids, cranium and jaw; hair lives on a shell around the cranium (an ellipsoid above its
equator, an elliptic cylinder below, so long hair can fall past the chin); ears are elliptic
cards on the sides; neck and clothes stand below. Every quadric is intersected in closed form
(`render_primitives.cast_quadric`). Facial parts are colour and bump functions of face
coordinates on the head's surface (`face_parts`), so they move and foreshorten as the head
turns. Shading is Lambertian, albedo * light * (ambient + (1 - ambient) max(n.l, 0)). Layers are
composited back to front, then blurred, given sensor noise and quantised to 8 bits.

Edges are anti-aliased analytically, so any resolution from 32 to 112 is rendered directly. One
jitted function renders a batch, a few images at a time so that intermediates stay in cache:
about 2,500 images/s at 64x64 on one CPU core (benchmarks/render_throughput.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.tasks.data.faces.face_factors import (
    CANONICAL_NUISANCE,
    IDENTITY_FACTORS,
    MAX_BLUR_AT_64,
    NUISANCE_FACTORS,
    IdentityFactors,
    IdentityParams,
    NuisanceFactors,
    NuisanceParams,
    canonical_nuisance,
    check_image_ids,
    check_seed,
    sample_identities,
    sample_nuisance,
)
from diffusion_jax.tasks.data.faces.face_parts import (
    SKIN_PALETTE,
    FaceCoordinates,
    Factors,
    hair_colour,
    nose_slope,
    paint_brows,
    paint_eyes,
    paint_facial_hair,
    paint_glasses,
    paint_mouth,
    paint_nose,
    paint_skin_marks,
    skin_colour,
)
from diffusion_jax.tasks.data.faces.render_primitives import (
    FAR,
    Rays,
    cast_quadric,
    coverage,
    dot,
    ellipse_distance,
    integer_hash,
    lambert,
    mix,
    normalise,
    over,
    palette,
    rotation,
    smoothstep,
    vec,
    wave,
)

__all__ = [
    "CANONICAL_NUISANCE",
    "IDENTITY_FACTORS",
    "MAX_RESOLUTION",
    "MIN_RESOLUTION",
    "NUISANCE_FACTORS",
    "RENDER_BATCH_SIZE",
    "IdentityFactors",
    "IdentityParams",
    "NuisanceFactors",
    "NuisanceParams",
    "canonical_nuisance",
    "render",
    "render_faces",
    "sample_identities",
    "sample_nuisance",
]

MIN_RESOLUTION = 32
MAX_RESOLUTION = 112
RENDER_BATCH_SIZE = 128
"""`render_faces` renders padded batches of this size: one compilation per resolution."""

_IMAGES_PER_LOOP_STEP = 8
"""Images rendered together in each step of the render loop (see `_render`)."""

_OCCLUDER_PALETTE = SKIN_PALETTE + ((0.15, 0.15, 0.17), (0.8, 0.8, 0.78))


# ------------------------------------------------------------------------------------------------
# Scene parts
# ------------------------------------------------------------------------------------------------


def _hair_mask(face: Factors, unit: jax.Array, pixel: jax.Array) -> jax.Array:
    """Hair on the shell (unit-sphere coordinates) above a bottom line: the hairline over the face
    (unit z > 0.75); beside and behind it (unit z < 0.3), -hair_length, but at least down to the
    nape (-0.55) at the back."""
    hairline = (
        face["hairline_height"]
        + face["temple_recession"] * unit[0] ** 2
        + face["hair_sweep"] * unit[0]
    )
    nape = -0.55 * smoothstep(0.2, -0.7, unit[2])
    bottom = mix(hairline, jnp.minimum(-face["hair_length"], nape), smoothstep(0.75, 0.3, unit[2]))
    return coverage(bottom - unit[1], pixel)


def _hat_mask(scene: Factors, unit: jax.Array, pixel: jax.Array) -> jax.Array:
    """A cap over the top of the hair shell, reaching lower at the back."""
    brim = 0.75 - 0.55 * jnp.clip(scene["hat"], 0.0, 1.0)
    return coverage(brim - unit[1] - 0.1 * unit[2], pixel) * (scene["hat"] > 0)


def _background(scene: Factors, u: jax.Array, v: jax.Array) -> jax.Array:
    colour_a = vec(
        scene["background_red_a"], scene["background_green_a"], scene["background_blue_a"]
    )
    colour_b = vec(
        scene["background_red_b"], scene["background_green_b"], scene["background_blue_b"]
    )
    along = 0.5 + 0.35 * (
        u * jnp.cos(scene["background_angle"]) + v * jnp.sin(scene["background_angle"])
    )
    frequency, phase = scene["background_frequency"], scene["background_phase"]
    texture = wave(frequency * u + phase) * wave(0.7 * frequency * v - 2.0 * phase)
    return mix(colour_a, colour_b, along) * (
        1.0 + jnp.maximum(scene["background_texture"], 0.0) * texture
    )


def _occluder_alpha(scene: Factors, u: jax.Array, v: jax.Array, pixel: float) -> jax.Array:
    """A rounded bar in front of everything."""
    cos_angle, sin_angle = jnp.cos(scene["occluder_angle"]), jnp.sin(scene["occluder_angle"])
    du, dv = u - scene["occluder_x"], v - scene["occluder_y"]
    size = jnp.clip(scene["occluder"], 0.0, 1.0)
    bar = ellipse_distance(
        du * cos_angle + dv * sin_angle,
        dv * cos_angle - du * sin_angle,
        0.25 + 0.35 * size,
        0.12 + 0.1 * size,
    )
    return coverage(bar, pixel) * (scene["occluder"] > 0)


@dataclasses.dataclass(frozen=True)
class _View:
    """The pixel grid (u, v), the viewing rays in the head frame, and the lighting of one image:
    `light` is the unit direction towards the light in the head frame, `light_world` in the world.
    """

    u: jax.Array
    v: jax.Array
    pixel: float
    rays: Rays
    light: jax.Array
    light_world: jax.Array
    light_colour: jax.Array
    ambient: jax.Array


@dataclasses.dataclass(frozen=True)
class _Layer:
    """A surface's colour [3, H, W], coverage [H, W] and depth [H, W] (larger is nearer)."""

    colour: jax.Array
    alpha: jax.Array
    depth: jax.Array | float = FAR


def _head_size(face: Factors, scene: Factors) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Cranium half-width, half-height and half-depth in image units."""
    width = scene["scale"] * face["head_width"]
    return width, width * face["face_length"], width * face["head_depth"]


def _head_centre(scene: Factors) -> jax.Array:
    return jnp.stack([scene["shift_x"], scene["shift_y"] + 0.1 * scene["scale"], 0.0])


def _view(scene: Factors, resolution: int) -> _View:
    pixel = 2.0 / resolution
    centres = (jnp.arange(resolution, dtype=jnp.float32) + 0.5) * pixel - 1.0
    u, v = centres[None, :], -centres[:, None]
    to_local = rotation(scene["yaw"], scene["pitch"], scene["roll"]).T
    rays = Rays(
        origin=to_local[:, 0, None, None] * u
        + to_local[:, 1, None, None] * v
        - (to_local @ _head_centre(scene))[:, None, None],
        direction=to_local[:, 2, None, None],
        origin_du=to_local[:, 0, None, None],
        origin_dv=to_local[:, 1, None, None],
        pixel=pixel,
    )
    elevation, azimuth = scene["light_elevation"], scene["light_azimuth"]
    light_world = vec(
        jnp.sin(azimuth) * jnp.cos(elevation),
        jnp.sin(elevation),
        jnp.cos(azimuth) * jnp.cos(elevation),
    )
    return _View(
        u=u,
        v=v,
        pixel=pixel,
        rays=rays,
        light=(to_local @ light_world[:, 0, 0])[:, None, None],
        light_world=light_world,
        light_colour=scene["light_intensity"]
        * mix(vec(0.88, 0.94, 1.06), vec(1.08, 0.97, 0.85), scene["light_warmth"]),
        ambient=scene["ambient"],
    )


def _head(face: Factors, scene: Factors, view: _View) -> _Layer:
    """The union of cranium and jaw ellipsoids (the nearer front surface wins) painted with the
    facial parts and shaded with the nose bump."""
    width, height, depth = _head_size(face, scene)
    cranium_radii = jnp.stack([width, height, depth])[:, None, None]
    jaw_radii = jnp.stack([face["jaw_width"] * width, 0.55 * width, 0.8 * depth])[:, None, None]
    jaw_centre = jnp.stack([0.0, 0.55 * width - height, -0.12 * depth])[:, None, None]
    cranium = cast_quadric(view.rays, 0.0, 1.0 / cranium_radii)
    jaw = cast_quadric(view.rays, jaw_centre, 1.0 / jaw_radii)
    jaw_t = jnp.where(jaw.coverage > 0, jaw.t_front, FAR)
    cranium_t = jnp.where(cranium.coverage > 0, cranium.t_front, FAR)
    head_t = jnp.maximum(jaw_t, cranium_t)
    surface = view.rays.point(head_t)
    # Blending the two normals over a small depth difference rounds off the crease between them.
    jaw_weight = smoothstep(-0.02, 0.02, jaw_t - cranium_t)
    normal = mix(
        normalise(surface / cranium_radii**2),
        normalise((surface - jaw_centre) / jaw_radii**2),
        jaw_weight,
    )
    at = FaceCoordinates(
        x=surface[0] * (1.0 / width),
        y=surface[1] * (1.0 / width),
        front=smoothstep(0.05, 0.45, surface[2] * (1.0 / depth)),
        pixel=view.pixel / width,
    )
    skin, hair = skin_colour(face), hair_colour(face)
    albedo = jnp.broadcast_to(skin, (3, *head_t.shape))
    albedo = paint_skin_marks(albedo, skin, face, at)
    albedo = paint_facial_hair(albedo, hair, face, at)
    albedo = paint_nose(albedo, skin, face, at)
    albedo = paint_mouth(albedo, skin, face, scene, at)
    albedo = paint_brows(albedo, hair, face, scene, at)
    albedo = paint_eyes(albedo, skin, face, scene, at)
    albedo = paint_glasses(albedo, face, scene, at)
    slope_x, slope_y = nose_slope(face, at)
    bent_normal = normal - jnp.stack([slope_x, slope_y, jnp.zeros_like(slope_x)])
    colour = albedo * view.light_colour * lambert(bent_normal, view.light, view.ambient)
    return _Layer(colour=colour, alpha=jnp.maximum(cranium.coverage, jaw.coverage), depth=head_t)


def _hair(face: Factors, scene: Factors, view: _View) -> tuple[_Layer, _Layer]:
    """Hair (and hat) on a shell around the cranium, an ellipsoid above its equator and an
    elliptic cylinder below: the layers where the rays enter the shell (in front of the head)
    and leave it (behind the head, seen where long hair frames the face)."""
    width, height, depth = _head_size(face, scene)
    rays = view.rays
    radii = jnp.stack(
        [width, (1.0 + 0.7 * face["hair_volume"]) / (1.0 + face["hair_volume"]) * height, depth]
    )
    radii = (1.0 + face["hair_volume"]) * radii[:, None, None]
    centre = jnp.stack([0.0, 0.0, -0.04 * depth])[:, None, None]
    dome = cast_quadric(rays, centre, 1.0 / radii)
    curtain = cast_quadric(
        rays, centre, jnp.stack([1.0 / radii[0], 0.0 * radii[1], 1.0 / radii[2]])
    )
    curtain_front_low = rays.point(curtain.t_front)[1] < centre[1]
    curtain_back_low = rays.point(curtain.t_back)[1] < centre[1]
    use_curtain_front = (
        (curtain.coverage > 0)
        & curtain_front_low
        & ((dome.coverage == 0) | (curtain.t_front > dome.t_front))
    )
    use_curtain_back = (
        (curtain.coverage > 0)
        & curtain_back_low
        & ((dome.coverage == 0) | (curtain.t_back < dome.t_back))
    )
    shell_coverage = jnp.maximum(dome.coverage, curtain.coverage * curtain_front_low)
    front_t = jnp.where(use_curtain_front, curtain.t_front, dome.t_front)
    front_unit = (rays.point(front_t) - centre) / radii
    back_unit = (
        rays.point(jnp.where(use_curtain_back, curtain.t_back, dome.t_back)) - centre
    ) / radii
    normal = front_unit / radii
    normal = normal.at[1].set(jnp.where(use_curtain_front, 0.0, normal[1]))
    shell_pixel = view.pixel / radii[1]
    hair = hair_colour(face)
    hat_colour = vec(scene["hat_red"], scene["hat_green"], scene["hat_blue"])
    hat_front, hat_back = (
        _hat_mask(scene, front_unit, shell_pixel),
        _hat_mask(scene, back_unit, shell_pixel),
    )
    # Strands run down the head: a wave around the vertical axis, over the pseudo-angle
    # x / (|x| + |z|).
    around = front_unit[0] / (jnp.abs(front_unit[0]) + jnp.abs(front_unit[2]) + 1e-6)
    strands = 1.0 + 0.07 * wave(
        7.0 * jnp.where(front_unit[2] > 0, around, 2.0 * jnp.sign(around) - around)
    )
    front_colour = over(hair * strands, hat_colour, hat_front) * view.light_colour
    front = _Layer(
        colour=front_colour * lambert(normal, view.light, view.ambient),
        alpha=shell_coverage * jnp.maximum(_hair_mask(face, front_unit, shell_pixel), hat_front),
        depth=front_t,
    )
    back = _Layer(
        colour=over(hair, hat_colour, hat_back) * view.light_colour * (0.7 * view.ambient),
        alpha=shell_coverage * jnp.maximum(_hair_mask(face, back_unit, shell_pixel), hat_back),
    )
    return front, back


def _ears(face: Factors, scene: Factors, view: _View, head: _Layer) -> _Layer:
    """Elliptic cards hinged at the sides of the head, swept back by ear_angle, with a darker
    hollow, hidden where the head is nearer. Mirroring x makes the two ears one: each ray meets
    the ear on the side where it crosses the ears' depth."""
    width, _, depth = _head_size(face, scene)
    hinge_depth = -0.1 * depth
    rays = view.rays
    crossing_x = (
        rays.origin[0] + (hinge_depth - rays.origin[2]) / rays.direction[2] * rays.direction[0]
    )
    side = jnp.where(crossing_x < 0, -1.0, 1.0)
    mirror = jnp.stack([side, jnp.ones_like(side), jnp.ones_like(side)])
    origin, direction = rays.origin * mirror, rays.direction * mirror
    half_height, half_depth = 0.3 * width * face["ear_size"], 0.16 * width * face["ear_size"]
    cos_angle, sin_angle = jnp.cos(face["ear_angle"]), jnp.sin(face["ear_angle"])
    hinge = jnp.stack([0.9 * width, (face["eye_height"] - 0.2) * width, hinge_depth])[:, None, None]
    card_normal = vec(cos_angle, 0.0, sin_angle)
    facing = dot(direction, card_normal)
    t = dot(hinge - origin, card_normal) / jnp.where(jnp.abs(facing) < 1e-3, 1e-3, facing)
    offset = origin + t * direction - hinge
    ear_y, ear_z = offset[1], dot(offset, vec(sin_angle, 0.0, -cos_angle)) - half_depth
    outline = ellipse_distance(ear_y, ear_z, half_height, half_depth)
    hollow = ellipse_distance(
        ear_y + 0.1 * half_height, ear_z, 0.55 * half_height, 0.45 * half_depth
    )
    alpha = coverage(outline, view.pixel / jnp.maximum(jnp.abs(facing), 0.25)) * (
        jnp.abs(facing) >= 1e-3
    )
    skin = skin_colour(face)
    colour = over(skin * vec(1.0, 0.88, 0.85), skin * 0.6, 0.7 * coverage(hollow, view.pixel))
    shade = lambert(card_normal * mirror * jnp.sign(facing), view.light, view.ambient)
    return _Layer(
        colour=colour * view.light_colour * shade,
        alpha=alpha * (1.0 - head.alpha * (head.depth > t)),
        depth=t,
    )


def _neck_and_clothes(face: Factors, scene: Factors, view: _View) -> tuple[_Layer, _Layer]:
    """A vertical cylinder below the head and an ellipse of clothes, in world coordinates."""
    width, height, _ = _head_size(face, scene)
    head_x, head_y = _head_centre(scene)[0], _head_centre(scene)[1]
    radius = 0.58 * width
    across = (view.u - head_x) * (1.0 / radius)
    neck_alpha = coverage((jnp.abs(across) - 1.0) * radius, view.pixel) * (
        view.v < head_y - 0.5 * height
    )
    neck_normal = jnp.stack(
        jnp.broadcast_arrays(across, 0.0 * view.v, jnp.sqrt(jnp.maximum(1.0 - across**2, 0.0)))
    )
    neck_colour = (
        0.75
        * skin_colour(face)
        * view.light_colour
        * lambert(neck_normal, view.light_world, view.ambient)
    )
    scale = scene["scale"]
    clothes = ellipse_distance(
        view.u - head_x, view.v - head_y + 1.8 * scale, 1.3 * scale, 0.9 * scale
    )
    clothes_colour = vec(scene["clothes_red"], scene["clothes_green"], scene["clothes_blue"])
    clothes_colour = clothes_colour * view.light_colour * (0.6 + 0.25 * view.v)
    return _Layer(neck_colour, neck_alpha), _Layer(clothes_colour, coverage(clothes, view.pixel))


def _render_one(face: Factors, scene: Factors, resolution: int) -> jax.Array:
    """Linear-intensity image [3, H, W] of one face (identity factors) in one scene (nuisance)."""
    view = _view(scene, resolution)
    head = _head(face, scene, view)
    hair_front, hair_back = _hair(face, scene, view)
    ears = _ears(face, scene, view, head)
    neck, clothes = _neck_and_clothes(face, scene, view)
    # Layers from back to front; depth tests only where the order can change (ears vs head, hair).
    hair_front = dataclasses.replace(
        hair_front, alpha=hair_front.alpha * (1.0 - ears.alpha * (ears.depth > hair_front.depth))
    )
    image = _background(scene, view.u, view.v)
    for layer in (hair_back, neck, clothes, head, ears, hair_front):
        image = over(image, layer.colour, layer.alpha)
    occluder_colour = (
        palette(scene["occluder_shade"], _OCCLUDER_PALETTE)
        * view.light_colour
        * (0.85 + 0.15 * view.v)
    )
    image = over(image, occluder_colour, _occluder_alpha(scene, view.u, view.v, view.pixel))
    return image * scene["exposure"]


def _blur(images: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
    """Separable Gaussian blur of images [N, 3, H, W] with per-image sigma [N] (pixels); edges
    are extended."""
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    weights = jnp.exp(-(offsets**2) / (2.0 * sigma[:, None] ** 2 + 1e-6))
    weights = weights / jnp.sum(weights, axis=1, keepdims=True)
    size = images.shape[-1]
    for axis in (2, 3):
        padding = [(0, 0)] * 4
        padding[axis] = (radius, radius)
        padded = jnp.pad(images, padding, mode="edge")
        images = sum(
            weights[:, k, None, None, None] * jax.lax.slice_in_dim(padded, k, k + size, axis=axis)
            for k in range(2 * radius + 1)
        )
    return images


def _camera(images: jax.Array, nuisance: NuisanceParams) -> jax.Array:
    """Blur, uniform sensor noise of the drawn standard deviation, and 8-bit quantisation:
    [N, 3, H, W] linear float -> [N, H, W, 3] uint8."""
    resolution = images.shape[-1]
    sigma = jnp.maximum(nuisance["blur"], 0.0) * (resolution / 64)
    images = _blur(images, sigma, radius=math.ceil(2 * MAX_BLUR_AT_64 * resolution / 64))
    channel, row, column = jnp.meshgrid(*(jnp.arange(n) for n in images.shape[1:]), indexing="ij")
    pattern = (nuisance["noise_pattern"] * 2**20)[:, None, None, None]
    uniform = integer_hash(pattern, channel[None], row[None], column[None])
    images = images + nuisance["noise"][:, None, None, None] * math.sqrt(12) * (uniform - 0.5)
    images = jnp.round(jnp.clip(images, 0.0, 1.0) * 255.0).astype(jnp.uint8)
    return jnp.transpose(images, (0, 2, 3, 1))


@functools.partial(jax.jit, static_argnames="resolution")
def _render(identity: IdentityParams, nuisance: NuisanceParams, resolution: int) -> jax.Array:
    # A loop over small groups, not one vmap over the batch: on CPU, XLA fuses the whole-batch
    # graph into kernels that recompute shared per-pixel values and ran ~30x slower.
    images = jax.lax.map(
        lambda args: _render_one(*args, resolution),
        (identity, nuisance),
        batch_size=_IMAGES_PER_LOOP_STEP,
    )
    return _camera(images, nuisance)


def _check_resolution(resolution: int) -> int:
    is_integer = isinstance(resolution, (int, np.integer)) and not isinstance(resolution, bool)
    if not is_integer or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(
            f"resolution must be an integer in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], "
            f"got {resolution!r}"
        )
    return int(resolution)


def render(identity: IdentityParams, nuisance: NuisanceParams, resolution: int) -> jax.Array:
    """Renders uint8 images [N, resolution, resolution, 3] from identity and nuisance factors,
    each a dict of arrays [N] (compiled once per N and resolution)."""
    resolution = _check_resolution(resolution)
    missing = {f.name for f in dataclasses.fields(IdentityFactors)} - set(identity)
    missing |= {f.name for f in dataclasses.fields(NuisanceFactors)} - set(nuisance)
    if missing:
        raise ValueError(f"identity and nuisance lack the factors {sorted(missing)}")
    return _render(identity, nuisance, resolution)


def render_faces(seed: int, identity_ids, image_ids, resolution: int) -> np.ndarray:
    """Image image_ids[n] of identity identity_ids[n] for n < N, as uint8 [N, H, W, 3] with
    H = W = resolution.

    Renders padded batches of `RENDER_BATCH_SIZE`, so any N reuses one compiled function.
    """
    resolution = _check_resolution(resolution)
    identity_ids, image_ids = check_image_ids(identity_ids, image_ids)
    seed = check_seed(seed)
    count = len(identity_ids)
    padded = -(-count // RENDER_BATCH_SIZE) * RENDER_BATCH_SIZE
    identity_ids = np.pad(identity_ids, (0, padded - count))
    image_ids = np.pad(image_ids, (0, padded - count))
    images = np.empty((padded, resolution, resolution, 3), np.uint8)
    for start in range(0, padded, RENDER_BATCH_SIZE):
        batch = slice(start, start + RENDER_BATCH_SIZE)
        identity = sample_identities(seed, identity_ids[batch])
        nuisance = sample_nuisance(seed, identity_ids[batch], image_ids[batch])
        images[batch] = np.asarray(_render(identity, nuisance, resolution))
    return images[:count]
