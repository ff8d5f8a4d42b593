import time

import jax
import jax.numpy as jnp
import numpy as np

shapes = [(32, 16, 16, 64, 64), (32, 8, 8, 128, 128), (32, 4, 4, 128, 128), (32, 16, 16, 128, 64)]


def conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def im2col(x, w):
    B, H, W, C = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate(
        [xp[:, i : i + H, j : j + W, :] for i in range(3) for j in range(3)], axis=-1
    )
    return patches.reshape(B * H * W, 9 * C) @ w.reshape(9 * C, -1)


def bench(f, *a, n=20):
    f(*a)[0].block_until_ready() if isinstance(f(*a), tuple) else f(*a).block_until_ready()
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
    res = []
    for name, fn in (("conv", conv), ("im2col", im2col)):
        fwd = jax.jit(fn)
        grad = jax.jit(jax.grad(lambda x, w: jnp.sum(fn(x, w) ** 2), argnums=(0, 1)))
        res.append(f"{name} fwd {bench(fwd, x, w):.3f}ms grad {bench(grad, x, w):.3f}ms")
    print((B, H, W, Ci, Co), " | ".join(res), flush=True)
