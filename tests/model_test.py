"""Tests of the transformer: shapes, causality, parameter count, logical axes, vmap."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from causalmix_jax import model
from causalmix_jax.configs import model as model_cfgs


def tiny(**kw) -> ml_collections.ConfigDict:
  c = model_cfgs.model_preset("tiny")
  c.vocab_size = 40
  c.seq_len = 12
  c.update(kw)
  return c


def test_logits_shape_and_dtype():
  cfg = tiny()
  params = jax.jit(lambda k: model.init_params(cfg, k))(jax.random.key(0))
  logits = jax.jit(lambda p, t: model.apply(cfg, p, t))(params, jnp.zeros((3, 12), jnp.int32))
  assert logits.shape == (3, 12, 40) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()


def test_causal_future_tokens_do_not_change_past_logits():
  cfg = tiny(n_layers=2)
  params = jax.jit(lambda k: model.init_params(cfg, k))(jax.random.key(1))
  a = jax.random.randint(jax.random.key(2), (2, 12), 0, 40)
  b = a.at[:, 7:].set((a[:, 7:] + 5) % 40)
  fwd = jax.jit(lambda t: model.apply(cfg, params, t))
  la, lb = fwd(a), fwd(b)
  np.testing.assert_allclose(la[:, :7], lb[:, :7], atol=1e-5)
  assert np.abs(np.asarray(la[:, 7:] - lb[:, 7:])).max() > 1e-3


@pytest.mark.parametrize("tied", [True, False])
def test_param_count_matches_closed_form(tied):
  cfg = tiny(tied_embeddings=tied)
  d, f, v, n = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_layers
  per_layer = 3 * d * d + d * d + 3 * d * f + 2 * d
  expected = n * per_layer + d + v * d * (1 if tied else 2)
  assert model.param_count(cfg) == expected
  params = jax.eval_shape(lambda k: model.init_params(cfg, k), jax.random.key(0))
  assert sum(x.size for x in jax.tree.leaves(params)) == expected


def test_flops_per_token_is_six_n_plus_attention():
  cfg = tiny()
  d, f, v, n, l = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_layers, cfg.seq_len
  matmul = n * (4 * d * d + 3 * d * f) + d * v
  assert model.flops_per_token(cfg) == 6 * matmul + 12 * n * d * l


def test_logical_axes_cover_every_parameter():
  cfg = tiny()
  axes = model.logical_axes(cfg)
  params = jax.eval_shape(lambda k: model.init_params(cfg, k), jax.random.key(0))
  specs = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  leaves = jax.tree.leaves(params)
  assert len(specs) == len(leaves)
  for spec, x in zip(specs, leaves):
    assert len(spec) == x.ndim
  assert axes["embed"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")


def test_bad_config_names_the_key():
  with pytest.raises(ValueError, match="n_heads"):
    model.param_count(tiny(n_heads=3))


def test_projection_is_the_contraction_of_its_kernel():
  # The 2-D matmul form must equal the einsum over the kernel's own axes, split or not.
  x_BxLxD = jax.random.normal(jax.random.key(1), (2, 5, 8))
  proj = model.Projection((8, 3, 2, 4), 1, ("embed", None, "heads", "kv"),
                          jax.nn.initializers.lecun_normal(), jnp.float32, split=True)
  params = nn.unbox(proj.init(jax.random.key(2), x_BxLxD))
  kernel = params["params"]["kernel"]
  outs = proj.apply(params, x_BxLxD)
  assert len(outs) == 3
  for i, y in enumerate(outs):
    np.testing.assert_allclose(y, jnp.einsum("bld,dhk->blhk", x_BxLxD, kernel[:, i]),
                               rtol=1e-5, atol=1e-6)
  a_BxLxHxK = jax.random.normal(jax.random.key(3), (2, 5, 2, 4))
  out = model.Projection((2, 4, 8), 2, ("heads", "kv", "embed"),
                         jax.nn.initializers.lecun_normal(), jnp.float32)
  p = nn.unbox(out.init(jax.random.key(4), a_BxLxHxK))
  np.testing.assert_allclose(out.apply(p, a_BxLxHxK),
                             jnp.einsum("blhk,hkd->bld", a_BxLxHxK, p["params"]["kernel"]),
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="kernel input shape"):
    out.apply(p, x_BxLxD)


def test_untied_embeddings_project_onto_the_vocabulary():
  cfg = tiny(tied_embeddings=False)
  params = jax.jit(lambda k: model.init_params(cfg, k))(jax.random.key(0))
  assert params["unembed"]["kernel"].shape == (cfg.d_model, cfg.vocab_size)
  logits = model.apply(cfg, params, jnp.zeros((2, 12), jnp.int32))
  assert logits.shape == (2, 12, 40)


def test_forward_and_backward_matmuls_have_no_batch_dimensions():
  # Projections fold leading axes into rows so XLA sees plain 2-D dots (3-D operands
  # made XLA CPU add layout copies and batched dots worth a quarter of a step). Attention's two
  # einsums are the only dots allowed batch dimensions.
  cfg = tiny()
  params = model.init_params(cfg, jax.random.key(0))
  tokens = jnp.zeros((2, 12), jnp.int32)
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: model.apply(cfg, p, tokens).sum()))(params)

  def dots(jx):
    for eqn in jx.eqns:
      if eqn.primitive.name == "dot_general":
        yield eqn
      for v in eqn.params.values():
        inner = getattr(v, "jaxpr", None)
        if inner is not None:
          yield from dots(getattr(inner, "jaxpr", inner))

  found = list(dots(jaxpr.jaxpr))
  batched = [e for e in found if e.params["dimension_numbers"][1] != ((), ())]
  unbatched = [e for e in found if e.params["dimension_numbers"][1] == ((), ())]
  assert unbatched and all(v.aval.ndim == 2 for e in unbatched for v in e.invars)
  # Attention: scores and values, forward and their backward products, per layer.
  assert len(batched) <= 6 * cfg.n_layers
  for e in batched:
    assert all(v.aval.ndim == 4 for v in e.invars)
