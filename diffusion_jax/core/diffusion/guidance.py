"""Classifier-free guidance (Ho & Salimans 2022) in one batched forward pass.

    out_guided = out_u + s (out_c - out_u)

where out_c = f(x_t, t, c) uses the condition and out_u = f(x_t, t, null) the model's learned
null condition. s = 0 is unconditional, s = 1 conditional, s > 1 extrapolates away from the
unconditional prediction. The combination is linear, so it is the same for eps, x_0 and v
predictions.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# apply_fn(x_t, t, cond, cond_mask) -> model_output, cond_mask bool [B]: True uses cond[i],
# False the model's null condition.
ConditionalApplyFn = Callable[[jax.Array, jax.Array, Any, jax.Array], jax.Array]


def guided_model_output(
    apply_fn: ConditionalApplyFn,
    x_t: jax.Array,
    t: jax.Array,
    cond: Any,
    guidance_scale: float | jax.Array,
) -> jax.Array:
    """out_u + s (out_c - out_u) from a single call of `apply_fn` on a batch of 2B.

    The batch [x_t; x_t] is evaluated with cond_mask [True] * B + [False] * B (`cond` is any
    pytree of [B, ...] arrays, duplicated the same way) and split into out_c and out_u. When
    `guidance_scale` is the Python number 1 or 0 the call is made on B examples only, with the
    mask all True or all False, so those scales cost no more than an unguided forward pass.
    """
    batch_size = x_t.shape[0]
    if isinstance(guidance_scale, (int, float)) and guidance_scale in (0, 1):
        cond_mask = jnp.full((batch_size,), guidance_scale == 1, jnp.bool_)
        return apply_fn(x_t, t, cond, cond_mask)

    def doubled(tree):
        return jax.tree.map(lambda leaf: jnp.concatenate([leaf, leaf]), tree)

    cond_mask = jnp.arange(2 * batch_size) < batch_size
    out = apply_fn(doubled(x_t), doubled(t), doubled(cond), cond_mask)
    out_c, out_u = out[:batch_size], out[batch_size:]
    return out_u + guidance_scale * (out_c - out_u)
