"""python launch/main.py --config=experiments/quickstart/config.py --workdir=workdir/quickstart --stage=all

The quickstart study: the embedded default pool (real text in seven domains plus a held-out
target evaluation set), a small reference model whose per-document loss, entropy and
high-entropy sum become covariates, a sweep of small proxies over mixtures and pool
states, the causal surface, the recommended mixture checked against its baselines, and a
short target run, sized for a laptop CPU.
Append ":smoke" to the config path for the tiny variant the tests use.
"""

from causalmix_jax.configs import base


def get_config(arg: str | None = None):
  cfg = base.get_config(",".join(v for v in ("cpu", arg or "") if v))
  with cfg.unlocked():
    cfg.reference.enabled = True
  cfg.lock()
  return cfg
