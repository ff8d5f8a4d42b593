"""Identity conditions for training: condition dropout and a frozen table of random identities.

Condition dropout combines two regularisers applied to a batch of identity embeddings c [B, D]:

- Classifier-free guidance dropout (Ho & Salimans 2022): example i keeps its condition with
  probability 1 - p_uncond, m_i ~ Bernoulli(1 - p_uncond); where m_i is False the UNet swaps c_i
  for its learned null condition, so one network learns both p(x | c) and p(x).

- Contextual partial dropout, CPD (IDiff-Face, Boutros et al. 2023): standard inverted dropout
  on the components of the condition, independently per example and per dimension,

      c'_ij = c_ij * z_ij / (1 - p),   z_ij ~ Bernoulli(1 - p),

  so about a fraction p of the components is zeroed and E[c'] = c. IDiff-Face's code
  (fdbtrs/IDiff-Face, models/diffusion/unet.py) is `torch.nn.Dropout(p)` in train mode, with
  p = 0.25 or 0.5 (their "cpd25" and "cpd50" configs). One difference: IDiff-Face drops
  components of the *projected* context, Linear(512 -> 256)(c), inside the model, whereas this
  function drops components of the input embedding c itself, before the UNet's projections.
  CPD stops the model from reading the identity off a few embedding components and trades
  identity fidelity for intra-class variation.
"""

import jax
import jax.numpy as jnp


def condition_dropout(
    rng: jax.Array, cond: jax.Array, *, p_uncond: float, partial_dropout: float
) -> tuple[jax.Array, jax.Array]:
    """Applies classifier-free-guidance dropout and contextual partial dropout (see module doc).

    Args:
      rng: PRNG key.
      cond: identity embeddings [B, D].
      p_uncond: probability that an example's condition is dropped (mask False), in [0, 1].
      partial_dropout: CPD rate p, the probability that one component is zeroed, in [0, 1).
        Surviving components are scaled by 1 / (1 - p). Both rates are Python floats (static
        arguments under jax.jit).

    Returns:
      (cond', cond_mask): cond' [B, D] in cond's dtype after CPD (all rows, masked or not), and
      cond_mask bool [B], False where the null condition must be used.
    """
    if cond.ndim != 2:
        raise ValueError(f"cond must be [batch, dim], got cond.shape={cond.shape}")
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must be in [0, 1], got p_uncond={p_uncond}")
    if not 0.0 <= partial_dropout < 1.0:
        raise ValueError(
            f"partial_dropout must be in [0, 1), got partial_dropout={partial_dropout}"
        )
    mask_rng, partial_rng = jax.random.split(rng)
    cond_mask = jax.random.bernoulli(mask_rng, 1.0 - p_uncond, (cond.shape[0],))
    keep = jax.random.bernoulli(partial_rng, 1.0 - partial_dropout, cond.shape)
    kept = cond / jnp.asarray(1.0 - partial_dropout, cond.dtype)
    return jnp.where(keep, kept, jnp.zeros_like(cond)), cond_mask


def random_identity_embeddings(num_identities: int, dim: int, seed: int) -> jax.Array:
    """A frozen table of identities drawn uniformly on the unit sphere S^(dim-1).

    Row i is g_i / ||g_i|| with g_i ~ N(0, I_dim), drawn from `jax.random.key(seed)`, so a seed
    names one table (for a given JAX PRNG implementation) on any backend. The condition of
    `config.condition.source="random_identity_table"`: one per training identity, no encoder.

    Returns:
      float32 [num_identities, dim], unit rows.
    """
    if num_identities < 1:
        raise ValueError(f"num_identities must be positive, got num_identities={num_identities}")
    if dim < 1:
        raise ValueError(f"dim must be positive, got dim={dim}")
    gaussian = jax.random.normal(jax.random.key(seed), (num_identities, dim), jnp.float32)
    return gaussian / jnp.linalg.norm(gaussian, axis=-1, keepdims=True)
