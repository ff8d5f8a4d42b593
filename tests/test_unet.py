"""Tests for the conditional UNet and its layers: shapes, conditioning, dropout, dtypes, parity."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusion_jax.core.models.layers import depth_to_space, sinusoidal_embedding, space_to_depth
from diffusion_jax.core.models.unet import UNet

TINY = dict(
    image_size=16,
    in_channels=3,
    out_channels=3,
    base_channels=8,
    channel_mults=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(8,),
    head_channels=8,
    dropout=0.1,
    cond_dim=32,
    cross_attention=True,
    num_cond_tokens=2,
    stem="conv",
    num_groups=4,
)
BATCH = 3
ALL_KEPT = jnp.ones((BATCH,), bool)


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, 16, 16, 3)).astype(np.float32)
    t = np.array([0, 17, 999], np.int32)
    cond = rng.normal(size=(BATCH, TINY["cond_dim"])).astype(np.float32)
    cond /= np.linalg.norm(cond, axis=-1, keepdims=True)
    return jnp.asarray(x), jnp.asarray(t), jnp.asarray(cond)


def _perturb(params: nnx.State, seed: int = 1, scale: float = 0.1) -> nnx.State:
    """Adds noise to every parameter, so zero-initialised layers no longer hide the inputs."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: p + scale * rng.normal(size=p.shape).astype(np.float32), params)


@pytest.fixture(scope="module")
def model():
    return UNet(**TINY, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def params(model):
    return nnx.state(model, nnx.Param)


@pytest.fixture(scope="module")
def perturbed(params):
    return _perturb(params)


@pytest.fixture(scope="module")
def graphdefs(model):
    """The model's structure in eval and in train mode (the mode is static, in the graphdef)."""
    model.eval()
    eval_graphdef, _ = nnx.split(model, nnx.Param)
    model.train()
    train_graphdef, _ = nnx.split(model, nnx.Param)
    return {"eval": eval_graphdef, "train": train_graphdef}


@pytest.fixture(scope="module")
def apply_eval(graphdefs):
    @jax.jit
    def apply(params, x, t, cond, cond_mask):
        return nnx.merge(graphdefs["eval"], params)(x, t, cond, cond_mask)

    return apply


@pytest.fixture(scope="module")
def apply_train(graphdefs):
    @jax.jit
    def apply(params, x, t, cond, cond_mask, dropout_key):
        network = nnx.merge(graphdefs["train"], params)
        return network(x, t, cond, cond_mask, rngs=nnx.Rngs(dropout=dropout_key))

    return apply


# ----------------------------------------------------------------------------------------------
# Layers.


def test_sinusoidal_embedding_matches_closed_form():
    t = np.array([0, 1, 17, 999])
    dim, half = 16, 8
    frequencies = 10_000.0 ** (-np.arange(half, dtype=np.float64) / half)
    angles = t[:, None].astype(np.float64) * frequencies[None]
    expected = np.concatenate([np.cos(angles), np.sin(angles)], axis=-1)
    got = sinusoidal_embedding(jnp.asarray(t, jnp.int32), dim)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-4)


def test_sinusoidal_embedding_rejects_odd_dim():
    with pytest.raises(ValueError, match="dim=7"):
        sinusoidal_embedding(jnp.zeros((2,), jnp.int32), 7)


def test_space_to_depth_matches_pixel_unshuffle_order_and_round_trips():
    x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
    got = np.asarray(space_to_depth(jnp.asarray(x), 2))
    assert got.shape == (2, 2, 3, 12)
    for p in range(2):
        for q in range(2):
            for c in range(3):
                # PyTorch's pixel_unshuffle puts input channel c, offset (p, q) at c*4 + p*2 + q.
                np.testing.assert_array_equal(got[..., c * 4 + p * 2 + q], x[:, p::2, q::2, c])
    np.testing.assert_array_equal(np.asarray(depth_to_space(jnp.asarray(got), 2)), x)


# ----------------------------------------------------------------------------------------------
# Construction: shapes, parameters, validation.


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"stem": "space_to_depth"},
        {"attention_resolutions": (), "cross_attention": False},
        {"attention_resolutions": (16, 8), "cross_attention": False},
        {
            "stem": "space_to_depth",
            "attention_resolutions": (4,),
            "in_channels": 4,
            "out_channels": 8,
        },
        {"channel_mults": (1, 2, 2), "num_res_blocks": 2, "attention_resolutions": (4,)},
    ],
)
def test_output_shape_and_dtype(overrides):
    config = {**TINY, **overrides}
    abstract = nnx.eval_shape(lambda: UNet(**config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    x = jax.ShapeDtypeStruct((BATCH, 16, 16, config["in_channels"]), jnp.float32)
    t = jax.ShapeDtypeStruct((BATCH,), jnp.int32)
    cond = jax.ShapeDtypeStruct((BATCH, config["cond_dim"]), jnp.float32)
    out = jax.eval_shape(
        lambda state, x, t, cond: nnx.merge(graphdef, state)(x, t, cond, rngs=nnx.Rngs(0)),
        state,
        x,
        t,
        cond,
    )
    assert out.shape == (BATCH, 16, 16, config["out_channels"])
    assert out.dtype == jnp.float32


def test_model_state_is_parameters_only(model, params):
    """split(model, nnx.Param) must carry all the state, so merge rebuilds the whole model."""
    assert len(jax.tree.leaves(nnx.state(model))) == len(jax.tree.leaves(params))
    assert params["null_cond"][...].shape == (TINY["cond_dim"],)


def test_bfloat16_compute_keeps_float32_params():
    model = UNet(**{**TINY, "dtype": jnp.bfloat16}, rngs=nnx.Rngs(0))
    model.eval()
    graphdef, params = nnx.split(model, nnx.Param)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}

    def apply(params, x, t, cond):
        return nnx.merge(graphdef, params)(x, t, cond)

    jaxpr = jax.make_jaxpr(apply)(params, *_inputs()).jaxpr
    matmuls = [e for e in jaxpr.eqns if e.primitive.name in ("conv_general_dilated", "dot_general")]
    assert len(matmuls) > 10
    for eqn in matmuls:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2, eqn.primitive.name
    assert jax.eval_shape(apply, params, *_inputs()).dtype == jnp.float32  # x's dtype


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"image_size": 13}, "image_size=13"),
        ({"stem": "space_to_depth", "image_size": 18}, "image_size=18"),
        ({"stem": "patchify"}, "stem='patchify'"),
        ({"attention_resolutions": (4,)}, "attention_resolutions"),
        ({"stem": "space_to_depth", "attention_resolutions": (16,)}, "attention_resolutions"),
        ({"num_groups": 3}, "num_groups=3"),
        ({"head_channels": 6}, "head_channels=6"),
        ({"base_channels": 0}, "base_channels=0"),
        ({"base_channels": 7, "num_groups": 7, "head_channels": 7}, "base_channels=7"),
        ({"channel_mults": ()}, "channel_mults"),
        ({"num_res_blocks": 0}, "num_res_blocks=0"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"num_cond_tokens": 0}, "num_cond_tokens=0"),
    ],
)
def test_invalid_config_raises_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        UNet(**{**TINY, **overrides}, rngs=nnx.Rngs(0))


def test_invalid_inputs_raise(graphdefs, params):
    model = nnx.merge(graphdefs["eval"], params)
    x, t, cond = _inputs()
    with pytest.raises(ValueError, match="x.shape"):
        model(x[:, :8], t, cond)
    with pytest.raises(ValueError, match="t must be integer"):
        model(x, t.astype(jnp.float32), cond)
    with pytest.raises(ValueError, match="cond.shape"):
        model(x, t, cond[:, :8])
    with pytest.raises(ValueError, match="cond_mask must be bool"):
        model(x, t, cond, jnp.ones((BATCH,), jnp.int32))


# ----------------------------------------------------------------------------------------------
# Behaviour of the compiled network.


def test_zero_initialised_head_outputs_zero(apply_eval, params):
    x, t, cond = _inputs()
    np.testing.assert_array_equal(np.asarray(apply_eval(params, x, t, cond, ALL_KEPT)), 0.0)


def test_gradients_flow_through_the_zero_head(graphdefs, params):
    """One SGD step moves the output off zero; the next gradient reaches the stem."""
    x, t, cond = _inputs()
    target = jax.random.normal(jax.random.key(3), x.shape)

    def loss(params):
        prediction = nnx.merge(graphdefs["eval"], params)(x, t, cond, ALL_KEPT)
        return jnp.mean((prediction - target) ** 2)

    loss_and_grad = jax.jit(jax.value_and_grad(loss))
    loss_0, grads_0 = loss_and_grad(params)
    assert np.any(np.asarray(grads_0["head"]["kernel"][...]) != 0)
    params_1 = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads_0)
    loss_1, grads_1 = loss_and_grad(params_1)
    assert loss_1 < loss_0
    assert np.any(np.asarray(grads_1["stem"]["kernel"][...]) != 0)


def test_output_depends_on_t_and_cond_per_example(apply_eval, perturbed):
    x, t, cond = _inputs()
    base = np.asarray(apply_eval(perturbed, x, t, cond, ALL_KEPT))
    assert np.abs(base).max() > 1e-2

    shifted_t = np.asarray(apply_eval(perturbed, x, t.at[1].add(100), cond, ALL_KEPT))
    other_cond = cond.at[1].set(-cond[1])
    shifted_cond = np.asarray(apply_eval(perturbed, x, t, other_cond, ALL_KEPT))
    for changed in (shifted_t, shifted_cond):
        assert np.abs(changed[1] - base[1]).max() > 1e-3
        # Examples do not interact (GroupNorm and attention are per example).
        np.testing.assert_allclose(changed[[0, 2]], base[[0, 2]], atol=1e-5)


def test_masked_examples_use_the_null_condition(apply_eval, perturbed):
    x, t, cond = _inputs()
    mask = jnp.array([False, True, False])
    out_a = np.asarray(apply_eval(perturbed, x, t, cond, mask))
    out_b = np.asarray(apply_eval(perturbed, x, t, -cond, mask))
    np.testing.assert_allclose(out_a[[0, 2]], out_b[[0, 2]], atol=1e-6)
    assert np.abs(out_a[1] - out_b[1]).max() > 1e-3

    null_cond = jnp.broadcast_to(perturbed["null_cond"][...], cond.shape)
    out_null = np.asarray(apply_eval(perturbed, x, t, null_cond, ALL_KEPT))
    np.testing.assert_allclose(out_a[[0, 2]], out_null[[0, 2]], atol=1e-5)


def test_dropout_is_random_in_train_mode_and_off_in_eval_mode(apply_train, apply_eval, perturbed):
    x, t, cond = _inputs()
    key_0, key_1 = jax.random.key(0), jax.random.key(1)
    train_0 = np.asarray(apply_train(perturbed, x, t, cond, ALL_KEPT, key_0))
    np.testing.assert_array_equal(train_0, apply_train(perturbed, x, t, cond, ALL_KEPT, key_0))
    assert np.abs(train_0 - apply_train(perturbed, x, t, cond, ALL_KEPT, key_1)).max() > 1e-3

    eval_out = np.asarray(apply_eval(perturbed, x, t, cond, ALL_KEPT))
    np.testing.assert_array_equal(eval_out, apply_eval(perturbed, x, t, cond, ALL_KEPT))
    assert np.abs(eval_out - train_0).max() > 1e-3


def test_train_mode_without_rngs_raises(graphdefs, params):
    with pytest.raises(ValueError, match="rngs=None"):
        nnx.merge(graphdefs["train"], params)(*_inputs())


def test_jit_of_split_merge_matches_eager(graphdefs, apply_eval, perturbed):
    """Also checks that cond_mask=None means every condition is kept."""
    x, t, cond = _inputs()
    eager = np.asarray(nnx.merge(graphdefs["eval"], perturbed)(x, t, cond))
    np.testing.assert_allclose(eager, apply_eval(perturbed, x, t, cond, ALL_KEPT), atol=1e-5)


def test_torch_twin_has_the_same_parameters_and_function(apply_eval, perturbed):
    torch = pytest.importorskip("torch")
    from diffusion_jax.torch_twins import unet as torch_unet

    twin = torch_unet.TorchUNet(**TINY).eval()
    assert sum(p.numel() for p in twin.parameters()) == sum(
        leaf.size for leaf in jax.tree.leaves(perturbed)
    )
    torch_unet.load_jax_params(
        twin, {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(perturbed)}
    )
    x, t, cond = _inputs()
    mask = jnp.array([True, False, True])
    with torch.no_grad():
        torch_out = twin(
            torch.from_numpy(np.array(x)).permute(0, 3, 1, 2),
            torch.from_numpy(np.array(t)),
            torch.from_numpy(np.array(cond)),
            torch.from_numpy(np.array(mask)),
        )
    np.testing.assert_allclose(
        torch_out.permute(0, 2, 3, 1).numpy(), apply_eval(perturbed, x, t, cond, mask), atol=1e-4
    )
