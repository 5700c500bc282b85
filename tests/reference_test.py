"""The reference model's scores and what they give pool states: per-token loss and
entropy of known fake models, document scores and the HES threshold, the exposure
arithmetic of filtered/cut/duplicated states against a brute-force materialisation, the
device sampler's keep masks against the host's, the deploy pool's quality filter, and
loading a saved reference model."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalmix_jax import checkpointing
from causalmix_jax import model
from causalmix_jax import reference
from causalmix_jax import train_step
from causalmix_jax.configs import base
from causalmix_jax.data import covariates
from causalmix_jax.data import doc_scores
from causalmix_jax.data import pool as pool_lib
from causalmix_jax.data import pool_shift
from causalmix_jax.data import sources
from causalmix_jax.data import token_pool
from tests.interventions_test import fake_doc_scores


def _pool(seed: int = 0, docs: int = 40) -> pool_lib.Pool:
  rng = np.random.default_rng(seed)
  words = {"a": list("abcdefgh "), "b": list("0123456789+= "), "c": list("xyz .")}
  return pool_lib.from_documents(
      {d: ["".join(rng.choice(w, int(rng.integers(20, 300)))) for _ in range(docs)]
       for d, w in words.items()}, ["target text"])


def test_fake_models_give_known_losses_and_entropies():
  pool = pool_lib.from_documents({"a": ["hello world " * 40], "b": ["abc " * 60]}, ["t"])
  vocab = pool.vocab_size

  def uniform(tokens_BxL):
    return jnp.zeros(tokens_BxL.shape + (vocab,), jnp.float32)

  scores = reference.score_documents(pool, uniform, seq_len=16, batch_size=4,
                                     progress=False)
  for d in pool.domains:
    assert scores.scores[d]["loss_bits"][0] == pytest.approx(np.log2(vocab), rel=1e-5)
    assert scores.scores[d]["entropy_bits"][0] == pytest.approx(np.log2(vocab), rel=1e-5)
    # Every position but the first of the single document is predicted and scored.
    assert scores.scored_tokens[d][0] == int(pool.train_mask[d][1:].sum())

  # Logit 5 on "the same token again": entropy and losses are known in closed form.
  def repeat(tokens_BxL):
    return 5.0 * jax.nn.one_hot(tokens_BxL, vocab)

  scores = reference.score_documents(pool, repeat, seq_len=16, batch_size=4,
                                     progress=False)
  z = np.exp(5.0) + vocab - 1
  p_hit, p_miss = np.exp(5.0) / z, 1 / z
  ent = -(p_hit * np.log2(p_hit) + (vocab - 1) * p_miss * np.log2(p_miss))
  for d in pool.domains:
    assert scores.scores[d]["entropy_bits"][0] == pytest.approx(ent, rel=1e-4)
  # "abc abc": no byte repeats its predecessor. "hello world": "ll" does.
  assert scores.scores["b"]["loss_bits"][0] == pytest.approx(-np.log2(p_miss), rel=1e-4)
  assert scores.scores["a"]["loss_bits"][0] < -np.log2(p_miss)
  cov = covariates.compute_covariates(pool, {}, doc_scores=scores)
  vec = covariates.feature_vector(cov)
  assert vec["x_ref_loss_bits__b"] == pytest.approx(-np.log2(p_miss), rel=1e-4)
  assert {"x_ref_entropy_bits", "x_ref_hes_bits__a", "x_ref_hes_bits"} <= set(vec)


def test_document_scores_and_hes_from_token_scores():
  starts = {"a": np.array([0, 4, 10]), "b": np.array([0, 5])}
  loss = {"a": np.arange(12.0), "b": np.full(8, 2.0)}
  ent = {"a": np.zeros(12), "b": np.zeros(8)}
  ent["a"][11] = 9.0  # the single highest-entropy token of the pool
  scored = {"a": np.ones(12, bool), "b": np.ones(8, bool)}
  scored["a"][0] = scored["a"][4] = scored["a"][10] = False  # first tokens: context
  s = doc_scores.from_token_scores(["a", "b"], starts, loss, ent, scored)
  np.testing.assert_allclose(s.scores["a"]["loss_bits"], [2.0, 7.0, 11.0])
  np.testing.assert_array_equal(s.scored_tokens["a"], [3, 5, 1])
  # One threshold for the pool: the top 0.5% of every domain's scored entropies.
  every = np.concatenate([ent["a"][scored["a"]], ent["b"][scored["b"]]])
  assert s.hes_threshold == pytest.approx(np.quantile(every, 0.995))
  np.testing.assert_allclose(s.scores["a"]["hes_bits"], [0.0, 0.0, 9.0])
  np.testing.assert_allclose(s.scores["b"]["hes_bits"], [0.0, 0.0])
  # Keep the lowest-loss third: document 0; "highest" keeps document 2.
  np.testing.assert_array_equal(s.keep_mask("a", 0.34), [True, False, False])
  high = dataclasses.replace(s, keep="highest")
  np.testing.assert_array_equal(high.keep_mask("a", 0.34), [False, False, True])
  with pytest.raises(sources.DataError, match="keep fraction 0"):
    s.keep_mask("a", 0.0)
  with pytest.raises(sources.DataError, match="reference.quality_score"):
    dataclasses.replace(s, quality_score="perplexity")


def _states(pool, scores):
  full = pool_shift.full(pool)
  kept = {d: pool_shift.kept_tokens(pool, d, scores.keep_mask(d, 0.5)) for d in "ab"}
  filt = pool_shift.quality_filter(full, "a", 0.5, kept["a"])
  return [
      filt,
      pool_shift.inject_duplicates(pool_shift.subsample(filt, "a", kept["a"] // 2), "a",
                                   0.3),
      pool_shift.inject_duplicates(pool_shift.quality_filter(
          pool_shift.subsample(full, "c", 900), "b", 0.5, kept["b"]), "b", 0.25),
  ]


def test_exposed_features_match_a_brute_force_materialisation():
  pool = _pool()
  scores = fake_doc_scores(pool, seed=3)
  for state in _states(pool, scores):
    cov = covariates.compute_covariates(pool, {}, state=state, doc_scores=scores)
    # Brute force: a pool whose tokens are their own positions, materialised the same
    # way, maps every exposed token to its document's score.
    positions = dataclasses.replace(pool, train={d: np.arange(len(pool.train[d]),
                                                              dtype=np.int32)
                                                 for d in pool.domains})
    mat = pool_shift.materialise(positions, state, scores)
    for d in pool.domains:
      doc_of = np.searchsorted(pool.doc_starts[d], mat.train[d], side="right") - 1
      for name, feat in doc_scores.FEATURES.items():
        want = scores.scores[d][name][doc_of].mean()
        want *= 1000.0 if name == "hes_bits" else 1.0
        assert cov["per_domain"][d][feat] == pytest.approx(want, rel=1e-9), (state, d)
      assert cov["per_domain"][d]["tokens"] == len(mat.train[d])


def test_device_keep_masks_equal_the_host_materialisation():
  pool = _pool(seed=1)
  scores = fake_doc_scores(pool, seed=4)
  tp = token_pool.from_pool(pool, seq_len=8, eval_batch_size=2, eval_batches=1)
  arrays = tp.device_arrays()
  for state in _states(pool, scores):
    host = pool_shift.materialise(pool, state, scores)
    kept = tp.kept_end(pool_shift.keep_masks(pool, state, scores))
    n_D, r_D = state.to_arrays(pool.domains)
    for i, d in enumerate(pool.domains):
      pos = jnp.arange(int(n_D[i]), dtype=jnp.int32)
      src = token_pool.source_positions(pos, jnp.int32(n_D[i]), jnp.float32(r_D[i]))
      flat = token_pool.kept_flat_positions(arrays, jnp.int32(i), src, jnp.asarray(kept))
      np.testing.assert_array_equal(tp.tokens[np.asarray(flat)], host.train[d])
      np.testing.assert_array_equal(tp.mask[np.asarray(flat)], host.train_mask[d])
  # Every document kept: the same batches as the unfiltered sampler.
  all_kept = tp.kept_end({})
  key = jax.random.key(0)
  w = np.array([0.2, 0.5, 0.3], np.float32)
  n_D, r_D = pool_shift.full(pool).to_arrays(pool.domains)
  plain = tp.sample_batch(key, w, n_D, r_D, 16, 8)
  masked = tp.sample_batch(key, w, n_D, r_D, 16, 8, kept_end_M=all_kept)
  for k in plain:
    np.testing.assert_array_equal(plain[k], masked[k])
  # A filtered state's batches come only from kept documents: with tokens that are their
  # own positions, every sampled token lies in a kept document of domain a.
  positions = dataclasses.replace(pool, train={d: np.arange(len(pool.train[d]),
                                                            dtype=np.int32)
                                               for d in pool.domains})
  tp_pos = token_pool.from_pool(positions, seq_len=8, eval_batch_size=2, eval_batches=1)
  state = _states(pool, scores)[0]
  kept = tp_pos.kept_end(pool_shift.keep_masks(pool, state, scores))
  n_D, r_D = state.to_arrays(pool.domains)
  batch = tp_pos.sample_batch(key, np.array([1.0, 0.0, 0.0], np.float32), n_D, r_D, 32,
                              8, kept_end_M=kept)
  mask_a = scores.keep_mask("a", 0.5)
  doc_of = np.searchsorted(pool.doc_starts["a"], np.asarray(batch["tokens"]).ravel(),
                           side="right") - 1
  assert mask_a[doc_of].all() and not mask_a.all()


def test_deploy_quality_filter_needs_scores_and_names_the_key():
  pool = _pool()
  scores = fake_doc_scores(pool)
  st = pool_shift.deploy_state(pool, {"a": 0.5}, {}, {"b": 0.5}, scores)
  assert st.quality == {"b": 0.5} and st.name == "deploy"
  mask = scores.keep_mask("b", 0.5)
  assert st.n_tokens["b"] == pool_shift.kept_tokens(pool, "b", mask)
  assert mask.sum() == round(0.5 * len(mask))
  with pytest.raises(sources.DataError, match="pool.deploy.quality.b=0.5 .*reference.enabled"):
    pool_shift.deploy_state(pool, {}, {}, {"b": 0.5}, None)
  with pytest.raises(sources.DataError, match="pool.deploy.quality.b=1.5"):
    pool_shift.deploy_state(pool, {}, {}, {"b": 1.5}, scores)
  with pytest.raises(sources.DataError, match="needs the reference stage"):
    pool_shift.materialise(pool, st, None)
  back = pool_shift.PoolState.from_dict(st.to_dict())
  assert back.quality == st.quality and back.n_tokens == st.n_tokens


def test_saved_reference_model_is_loaded_back(tmp_path):
  cfg = base.get_config("smoke")
  spec = dataclasses.replace(model.ModelSpec.from_config(cfg.target.model), vocab_size=259)
  state = train_step.init_train_state(spec, cfg.target.optim, jax.random.key(3))
  ckpt = checkpointing.Checkpointer(
      tmp_path / "target" / "checkpoints", fingerprint="f",
      fingerprint_config={"model": dataclasses.asdict(spec)}, async_save=False)
  ckpt.save(4, state)
  ckpt.close()
  loaded_spec, params = checkpointing.load_params(tmp_path / "target")
  assert loaded_spec == spec
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, np.asarray(b))
  pool = _pool()
  got = reference.score_documents(pool, reference.logits_fn_of(loaded_spec, params),
                                  seq_len=spec.seq_len, progress=False)
  want = reference.score_documents(pool, reference.logits_fn_of(spec, state.params),
                                   seq_len=spec.seq_len, progress=False)
  for d in pool.domains:
    np.testing.assert_allclose(got.scores[d]["loss_bits"], want.scores[d]["loss_bits"],
                               rtol=1e-6)
  # An untrained model predicts close to uniform over 259 ids: ~8 bits.
  assert 6.0 < np.nanmean(got.scores["a"]["entropy_bits"]) < 8.1
  with pytest.raises(FileNotFoundError, match="no checkpoints"):
    checkpointing.load_params(tmp_path / "nope")


def test_scores_round_trip_and_name_a_bad_file(tmp_path):
  pool = _pool()
  scores = fake_doc_scores(pool)
  scores.save(tmp_path / "s.npz")
  back = doc_scores.DocScores.load(tmp_path / "s.npz")
  for d in pool.domains:
    np.testing.assert_array_equal(back.keep_mask(d, 0.3), scores.keep_mask(d, 0.3))
  (tmp_path / "bad.npz").write_bytes(b"not an npz")
  with pytest.raises(sources.DataError, match="bad.npz: unreadable document scores"):
    doc_scores.DocScores.load(tmp_path / "bad.npz")


def _stage_config(**reference):
  from tests import fixture_pool  # pylint: disable=import-outside-toplevel
  cfg = fixture_pool.smoke_config()
  with cfg.unlocked():
    cfg.reference.enabled = True
    cfg.reference.optim.steps = 6
    cfg.reference.model.seq_len = 16
    for k, v in reference.items():
      cfg.reference[k] = v
    cfg.pool.deploy.quality["prose"] = 0.5
  return cfg


def test_reference_stage_trains_saves_and_loads_back(tmp_path):
  from causalmix_jax import pipeline  # pylint: disable=import-outside-toplevel
  from causalmix_jax import study as study_lib  # pylint: disable=import-outside-toplevel
  trained = tmp_path / "trained"
  pipeline.run_stages(["pool", "reference"], _stage_config(), trained)
  study = study_lib.Study(trained)
  assert study.reference_enabled and study.reference["training"]["steps"] == 6
  assert "x_ref_hes_bits__prose" in study.covariate_vector
  # The deploy pool's quality filter is applied with the document scores.
  deploy = study.deploy
  assert deploy["state"]["quality"] == {"prose": 0.5}
  assert (deploy["covariates"]["x_ref_loss_bits__prose"]
          < study.covariate_vector["x_ref_loss_bits__prose"])
  # Another study loads the saved model instead of training one: the same scores.
  loaded = tmp_path / "loaded"
  pipeline.run_stages(["pool", "reference"],
                      _stage_config(checkpoint=str(trained / "reference")), loaded)
  other = study_lib.Study(loaded)
  assert other.reference["training"] == {"loaded_from": str(trained / "reference")}
  for d in study.doc_scores.domains:
    np.testing.assert_allclose(other.doc_scores.scores[d]["loss_bits"],
                               study.doc_scores.scores[d]["loss_bits"], rtol=1e-5)
  # Off: only the summary, and no reference covariates.
  off = _stage_config(enabled=False)
  with off.unlocked():
    off.pool.deploy.quality = {}
  pipeline.run_stages(["pool", "reference"], off, tmp_path / "off")
  plain = study_lib.Study(tmp_path / "off")
  assert not plain.reference_enabled and plain.doc_scores is None
  assert not any(k.startswith("x_ref_") for k in plain.covariate_vector)


def test_bad_quality_settings_name_their_config_key():
  from causalmix_jax import interventions  # pylint: disable=import-outside-toplevel
  pool = _pool()
  scores = fake_doc_scores(pool)
  cfg = base.get_config("smoke")
  with cfg.unlocked():
    cfg.design.state_kinds = ("quality",)
    cfg.design.quality_fractions = (0.5, 1.5)
  with pytest.raises(interventions.DesignError, match=r"design.quality_fractions=\(0.5, 1.5\)"):
    interventions.make_states(pool, cfg.design, seq_len=8, rng=np.random.default_rng(0),
                              scores=scores)
  with pytest.raises(sources.DataError, match="reference.keep='top'"):
    dataclasses.replace(scores, keep="top")
