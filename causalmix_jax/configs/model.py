"""Config sections for the mesh, the proxy model and the target model and their training."""

from __future__ import annotations

import ml_collections


def mesh_section(variants: frozenset[str]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.axes = ("data", "fsdp", "tensor")
  c.shape = (-1, 1, 1)
  # Logical parameter/activation axis name -> mesh axis (or None), as data.
  c.rules = (
      ("batch", ("data", "fsdp")),
      ("vocab", "tensor"),
      ("embed", "fsdp"),
      ("mlp", "tensor"),
      ("heads", "tensor"),
      ("kv", None),
      ("length", None),
  )
  del variants
  return c


def model_preset(name: str) -> ml_collections.ConfigDict:
  """Decoder-only transformer sizes. Proxy and target differ by preset only."""
  presets = {
      "tiny": dict(d_model=32, n_layers=1, n_heads=2, d_ff=64),
      "proxy": dict(d_model=64, n_layers=2, n_heads=4, d_ff=192),
      "proxy_large": dict(d_model=128, n_layers=4, n_heads=4, d_ff=384),
      "small": dict(d_model=256, n_layers=4, n_heads=4, d_ff=768),
      # As wide as CPU matmuls like (fewer, larger GEMMs per FLOP of attention/overhead).
      "small_wide": dict(d_model=512, n_layers=4, n_heads=4, d_ff=2048),
      "150m": dict(d_model=768, n_layers=12, n_heads=12, d_ff=2048),
      "1b": dict(d_model=2048, n_layers=16, n_heads=16, d_ff=5632),
  }
  if name not in presets:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(presets)}")
  c = ml_collections.ConfigDict(presets[name])
  c.preset = name
  c.vocab_size = 260  # 256 bytes + specials; overwritten from pool.json at run time.
  c.seq_len = 128
  c.tied_embeddings = True
  c.rope_base = 10_000.0
  # Compute dtype of activations and matmuls ("float32" | "bfloat16"); params stay f32.
  c.dtype = "float32"
  # Rematerialise each block's activations in the backward pass (saves memory).
  c.remat = False
  return c


def optim_section(lr: float, steps: int, batch_size: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      lr=lr, min_lr_ratio=0.1, warmup_steps=max(1, steps // 20), steps=steps,
      batch_size=batch_size, weight_decay=0.1, b1=0.9, b2=0.95, clip_norm=1.0,
      grad_accum=1))


def proxy_section(variants: frozenset[str]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  smoke, cpu = "smoke" in variants, "cpu" in variants
  c.model = model_preset("tiny" if smoke else "proxy")
  # Tokens per proxy run = steps * batch_size * seq_len: 51k on a laptop CPU ("cpu"),
  # 614k on an accelerator (the default).
  c.optim = optim_section(lr=3e-3, steps=20 if smoke else (100 if cpu else 300),
                          batch_size=8 if smoke or cpu else 16)
  c.model.seq_len = 32 if smoke else (64 if cpu else 128)
  return c


def target_section(variants: frozenset[str]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  smoke = "smoke" in variants
  cpu = "cpu" in variants
  c.model = model_preset("tiny" if smoke else ("proxy_large" if cpu else "small"))
  c.model.seq_len = 32 if smoke else 128
  c.optim = optim_section(lr=2e-3, steps=10 if smoke else (200 if cpu else 2000),
                          batch_size=8 if smoke else (16 if cpu else 32))
  # Mixture: read from this mixture.json ("" = <workdir>/optimise/mixture.json), unless
  # `weights` is set (domain -> weight).
  c.mixture_path = ""
  c.weights = ml_collections.ConfigDict()
  c.eval_every = 5 if smoke else 100
  c.eval_batches = 2 if smoke else 8
  c.checkpoint_every = 5 if smoke else 100
  c.keep_checkpoints = 2
  c.log_every = 1 if smoke else 10
  return c
