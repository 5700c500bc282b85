"""Decoder-only transformer (Flax Linen, used functionally): parameters, forward pass,
parameter count and model FLOPs. Proxies and the target differ by config only.

Public functions take the model config section (`cfg.proxy.model` / `cfg.target.model`)
and plain pytrees of arrays; Linen stays inside this module. Parameters carry logical
axis names ("vocab", "embed", "heads", "kv", "mlp"); `logical_axes(model_cfg)` returns
them as a tree of `PartitionSpec`s with the same structure as `init_params`' output, and
`init_params(..., boxed=True)` returns `nn.Partitioned` boxes for sharded state creation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

Params = Any

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The hashable subset of a model config the network is built from."""
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  d_ff: int
  seq_len: int
  tied_embeddings: bool
  rope_base: float
  dtype: str
  remat: bool

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @classmethod
  def from_config(cls, model_cfg: ml_collections.ConfigDict | "ModelSpec") -> "ModelSpec":
    if isinstance(model_cfg, ModelSpec):
      return model_cfg
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in model_cfg]
    if missing:
      raise KeyError(f"model config lacks key(s) {missing}")
    spec = cls(**{n: model_cfg[n] for n in names})
    if spec.d_model % spec.n_heads:
      raise ValueError(f"model.d_model={spec.d_model} is not divisible by "
                       f"model.n_heads={spec.n_heads}")
    if spec.head_dim % 2:
      raise ValueError(f"model head_dim={spec.head_dim} must be even for RoPE")
    if spec.dtype not in _DTYPES:
      raise ValueError(f"model.dtype={spec.dtype!r}; known: {sorted(_DTYPES)}")
    if spec.vocab_size < 2:
      raise ValueError(f"model.vocab_size={spec.vocab_size} must be >= 2")
    return spec


def _init(init_fn, names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(init_fn, names)


class RMSNorm(nn.Module):
  """Root-mean-square layer norm with a learned scale (statistics in float32)."""
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    scale_D = self.param("scale", _init(nn.initializers.ones, ("embed",)),
                         (x_BxLxD.shape[-1],), jnp.float32)
    x32 = x_BxLxD.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * scale_D).astype(x_BxLxD.dtype)


def rope(x_BxHxLxK: jax.Array, base: float) -> jax.Array:
  """Rotary position embedding (rotate-half form) over the last axis; positions run
  along axis -2 (heads-major layout [..., L, K])."""
  length, half = x_BxHxLxK.shape[-2], x_BxHxLxK.shape[-1] // 2
  freq_K2 = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_LxK2 = jnp.arange(length, dtype=jnp.float32)[:, None] * freq_K2[None, :]
  sin_LxK2, cos_LxK2 = jnp.sin(angle_LxK2), jnp.cos(angle_LxK2)
  x32 = x_BxHxLxK.astype(jnp.float32)
  a, b = x32[..., :half], x32[..., half:]
  out = jnp.concatenate([a * cos_LxK2 - b * sin_LxK2, b * cos_LxK2 + a * sin_LxK2], axis=-1)
  return out.astype(x_BxHxLxK.dtype)


def causal_attention(q_BxHxLxK: jax.Array, k_BxHxLxK: jax.Array,
                     v_BxHxLxK: jax.Array) -> jax.Array:
  """Causal softmax attention in heads-major layout: two batched matmuls over (B, H),
  the mask from iotas (no [L, L] constant), the softmax in float32. [B, H, L, K]."""
  length, head_dim = q_BxHxLxK.shape[-2], q_BxHxLxK.shape[-1]
  scores_BxHxLxL = jnp.einsum("bhlk,bhmk->bhlm", q_BxHxLxK * head_dim ** -0.5, k_BxHxLxK,
                              preferred_element_type=jnp.float32)
  row_LxL = jax.lax.broadcasted_iota(jnp.int32, (length, length), 0)
  col_LxL = jax.lax.broadcasted_iota(jnp.int32, (length, length), 1)
  scores_BxHxLxL = jnp.where(col_LxL <= row_LxL, scores_BxHxLxL,
                             jnp.finfo(jnp.float32).min)
  probs_BxHxLxL = jax.nn.softmax(scores_BxHxLxL, axis=-1).astype(v_BxHxLxK.dtype)
  return jnp.einsum("bhlm,bhmk->bhlk", probs_BxHxLxL, v_BxHxLxK)


class Projection(nn.Module):
  """A bias-free linear map computed as one 2-D matmul per output: the input's last
  `n_in` axes are contracted against the kernel's first `n_in` axes, and every leading
  axis is folded into the rows (`[rows, in] @ [in, out]`, reshaped back). Plain 2-D dots
  keep XLA from inserting layout copies around batched dots in the backward pass (on CPU
  they cost about a quarter of the step), and the folded dimensions keep their sharded
  axis major, so the reshapes are free under GSPMD.

  The parameter is `kernel` as in `nn.DenseGeneral`, initialised like it (a
  [prod(in), prod(out)] matrix reshaped to `kernel_shape`). With `split`, the axis right
  after the inputs indexes several projections of the same input, returned as a tuple:
  the kernel is sliced, not the activations, so the backward pass pads a small kernel
  gradient, not a big activation gradient."""
  kernel_shape: tuple[int, ...]
  n_in: int
  names: tuple[str | None, ...]
  kernel_init: Any
  dtype: Any
  split: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array | tuple[jax.Array, ...]:
    in_shape = self.kernel_shape[:self.n_in]
    if tuple(x.shape[x.ndim - self.n_in:]) != tuple(in_shape):
      raise ValueError(f"{self.name}: input trailing shape {x.shape[x.ndim - self.n_in:]} "
                       f"!= kernel input shape {in_shape}")
    n_in_flat = math.prod(in_shape)
    flat = (n_in_flat, math.prod(self.kernel_shape[self.n_in:]))

    def init(key, shape, dtype):
      return self.kernel_init(key, flat, dtype).reshape(shape)

    kernel = self.param("kernel", _init(init, self.names), self.kernel_shape, jnp.float32)
    kernel = kernel.astype(self.dtype)
    rows = x.shape[:x.ndim - self.n_in]
    x_NxI = x.astype(self.dtype).reshape(-1, n_in_flat)

    def project(k: jax.Array) -> jax.Array:
      out_shape = k.shape[self.n_in:]
      y_NxO = x_NxI @ k.reshape(n_in_flat, math.prod(out_shape))
      return y_NxO.reshape(rows + out_shape)

    if not self.split:
      return project(kernel)
    return tuple(project(jnp.take(kernel, i, axis=self.n_in))
                 for i in range(self.kernel_shape[self.n_in]))


class Block(nn.Module):
  """Pre-norm transformer block: causal self-attention with RoPE, then SwiGLU MLP."""
  spec: ModelSpec

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    s = self.spec
    dtype = _DTYPES[s.dtype]
    out_init = nn.initializers.variance_scaling(1.0 / (2 * s.n_layers), "fan_in", "normal")
    dense = nn.initializers.lecun_normal()

    h = RMSNorm(name="attn_norm")(x_BxLxD)
    q, k, v = (y_BxLxHxK.transpose(0, 2, 1, 3) for y_BxLxHxK in Projection(
        (s.d_model, 3, s.n_heads, s.head_dim), 1, ("embed", None, "heads", "kv"), dense,
        dtype, split=True, name="qkv")(h))
    q, k = rope(q, s.rope_base), rope(k, s.rope_base)
    att_BxLxHxK = causal_attention(q, k, v).transpose(0, 2, 1, 3)
    x_BxLxD = x_BxLxD + Projection(
        (s.n_heads, s.head_dim, s.d_model), 2, ("heads", "kv", "embed"), out_init, dtype,
        name="attn_out")(att_BxLxHxK)

    h = RMSNorm(name="mlp_norm")(x_BxLxD)
    gate_BxLxF, up_BxLxF = Projection(
        (s.d_model, 2, s.d_ff), 1, ("embed", None, "mlp"), dense, dtype, split=True,
        name="wi")(h)
    h = nn.silu(gate_BxLxF) * up_BxLxF
    return x_BxLxD + Projection((s.d_ff, s.d_model), 1, ("mlp", "embed"), out_init, dtype,
                                name="wo")(h)


class Transformer(nn.Module):
  """Token ids [B, L] -> next-token logits [B, L, V] (float32)."""
  spec: ModelSpec

  @nn.compact
  def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
    s = self.spec
    dtype = _DTYPES[s.dtype]
    embed = nn.Embed(
        s.vocab_size, s.d_model, dtype=dtype, name="embed",
        embedding_init=_init(nn.initializers.normal(s.d_model ** -0.5),
                             ("vocab", "embed")))
    x_BxLxD = embed(tokens_BxL)
    block = nn.remat(Block) if s.remat else Block
    for i in range(s.n_layers):
      x_BxLxD = block(s, name=f"block_{i}")(x_BxLxD)
    x_BxLxD = RMSNorm(name="final_norm")(x_BxLxD)
    if s.tied_embeddings:
      b, length, d = x_BxLxD.shape
      logits_BxLxV = embed.attend(x_BxLxD.reshape(b * length, d)).reshape(b, length, -1)
    else:
      logits_BxLxV = Projection((s.d_model, s.vocab_size), 1, ("embed", "vocab"),
                                nn.initializers.lecun_normal(), dtype, name="unembed")(x_BxLxD)
    return logits_BxLxV.astype(jnp.float32)


def init_params(model_cfg: ml_collections.ConfigDict | ModelSpec, key: jax.Array, *,
                boxed: bool = False) -> Params:
  """Fresh parameters (float32). Pure and vmappable over `key`.

  With `boxed=True` the leaves are `nn.Partitioned` boxes carrying logical axis names
  (for `eval_shape` -> shardings); otherwise plain arrays.
  """
  spec = ModelSpec.from_config(model_cfg)
  tokens_1xL = jnp.zeros((1, spec.seq_len), jnp.int32)
  params = Transformer(spec).init(key, tokens_1xL)["params"]
  return params if boxed else nn.unbox(params)


def apply(model_cfg: ml_collections.ConfigDict | ModelSpec, params: Params,
          tokens_BxL: jax.Array) -> jax.Array:
  """Logits [B, L, V] in float32 for token ids [B, L] (L <= seq_len)."""
  spec = ModelSpec.from_config(model_cfg)
  return Transformer(spec).apply({"params": params}, tokens_BxL)


def logical_axes(model_cfg: ml_collections.ConfigDict | ModelSpec) -> Params:
  """Tree (structure of `init_params`) of PartitionSpecs of logical axis names."""
  abstract = jax.eval_shape(
      lambda k: init_params(model_cfg, k, boxed=True), jax.random.key(0))
  return nn.get_partition_spec(abstract)


def param_count(model_cfg: ml_collections.ConfigDict | ModelSpec) -> int:
  """Number of parameters (embeddings included, counted once when tied)."""
  abstract = jax.eval_shape(lambda k: init_params(model_cfg, k), jax.random.key(0))
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(abstract)))


def flops_per_token(model_cfg: ml_collections.ConfigDict | ModelSpec) -> float:
  """Model FLOPs of one training step per token (forward + backward, no remat).

  6 x (parameters in matmuls, the output projection onto the vocabulary included) plus
  the attention score/value products, 12 x n_layers x d_model x seq_len, counted over
  the full (non-causal) square as in the usual MFU convention.
  """
  s = ModelSpec.from_config(model_cfg)
  per_layer = s.d_model * 3 * s.d_model + s.d_model * s.d_model + 3 * s.d_model * s.d_ff
  matmul_params = s.n_layers * per_layer + s.d_model * s.vocab_size
  return float(6 * matmul_params + 12 * s.n_layers * s.d_model * s.seq_len)
