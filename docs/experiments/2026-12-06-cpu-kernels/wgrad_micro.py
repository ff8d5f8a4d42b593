import time

import jax
import jax.numpy as jnp
import numpy as np

shapes = [
    (32, 16, 16, 192, 64),
    (32, 16, 16, 64, 64),
    (32, 8, 8, 128, 128),
    (32, 8, 8, 256, 128),
    (32, 4, 4, 128, 128),
]


def conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def wgrad_xla(x, dy, w):
    _, vjp = jax.vjp(lambda w: conv(x, w), w)
    return vjp(dy)[0]


def wgrad_taps(x, dy, w):
    B, H, W, C = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    taps = [
        jnp.einsum("bhwc,bhwo->co", xp[:, i : i + H, j : j + W, :], dy)
        for i in range(3)
        for j in range(3)
    ]
    return jnp.stack(taps).reshape(3, 3, C, -1)


def dgrad_xla(x, dy, w):
    _, vjp = jax.vjp(lambda x: conv(x, w), x)
    return vjp(dy)[0]


def bench(f, *a, n=20):
    jax.block_until_ready(f(*a))
    best = 1e9
    for rep in range(3):
        t = time.perf_counter()
        for _ in range(n):
            out = f(*a)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t) / n)
    return best * 1e3


for B, H, W, Ci, Co in shapes:
    x = jnp.asarray(np.random.randn(B, H, W, Ci), jnp.float32)
    w = jnp.asarray(np.random.randn(3, 3, Ci, Co) * 0.05, jnp.float32)
    dy = jnp.asarray(np.random.randn(B, H, W, Co), jnp.float32)
    a = jax.jit(wgrad_xla)(x, dy, w)
    b = jax.jit(wgrad_taps)(x, dy, w)
    err = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
    print(
        (B, H, W, Ci, Co),
        f"fwd {bench(jax.jit(conv), x, w):.2f} dgrad {bench(jax.jit(dgrad_xla), x, dy, w):.2f} wgrad xla {bench(jax.jit(wgrad_xla), x, dy, w):.2f} taps {bench(jax.jit(wgrad_taps), x, dy, w):.2f} ms relerr {err:.1e}",
        flush=True,
    )
