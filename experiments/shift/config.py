"""python launch/main.py --config=experiments/shift/config.py --workdir=workdir/shift --stage=pool,reference,design,sweep,fit,optimise,validate

The pool-shift study (CausalMix's claim): sweep proxies on small sampled sub-pools of the
embedded pool only, then recommend, with no new sweep, for a larger, shifted pool the
sweep never saw, and train the recommendation beside the baselines on that pool.

- Reference model (`reference`): a small LM trained on the pool's natural mixture scores
  every document (loss, entropy, high-entropy sum); these are covariates of every pool
  state and the score quality filters keep the lowest-loss documents by.
- Sweep: 40 pool states, each a random subsample keeping 1/8 to 1/2 of every domain's
  tokens (so no proxy ever sees the full pool); every second state first keeps only the
  top 25-75% of one or two domains' documents by the reference loss. One mixture per
  state, 2 seeds.
- Deploy pool (`pool.deploy`): the full pool (every domain larger than in any sweep
  state), except `math` cut to 1/16 of its tokens, which forces repetition at any
  sizeable math weight, `code` with a quarter of its tokens duplicated, and `literature`
  quality-filtered to its lower-loss half of documents.
- Validate: the recommendation, its variants, uniform, natural, RegMix's LightGBM picks,
  the covariate-blind pick, the sweep's best-known mixture and the pick before the safe
  check against uniform ("unguarded"), 3 seeds each, on the deploy pool, at the proxies' scale
  and budget (so the surface's predictions are checked too); the recommendation is made
  for that budget.
Sized for a 2-core CPU; ":smoke" is a tiny variant for tests. ":transfer" validates at
a target larger than the proxies instead (`TRANSFER`): the same sweep, fit and deploy
pool, the recommendation made for the target's budget, and every mixture trained at the
target's scale, so what is checked is whether the pick carries over to a bigger model
trained on more tokens ("smoke,transfer" for tests).
"""

from causalmix_jax.configs import base
from causalmix_jax.configs import model as model_cfg

# The ":transfer" target against the proxies: this model preset (8x the proxy's
# parameters), and these multiples of the proxies' steps and batch (4x their tokens).
TRANSFER = {"preset": "proxy_large", "steps": 2, "batch": 2}
TRANSFER_MIXTURES = ("recommended", "unguarded", "uniform", "natural", "regmix",
                     "regmix_topk", "best_known")


def get_config(arg: str | None = None):
  names = [v.strip() for v in (arg or "").split(",") if v.strip()]
  transfer, smoke = "transfer" in names, "smoke" in names
  variants = ",".join(["cpu"] + [v for v in names if v != "transfer"])
  cfg = base.get_config(variants)
  with cfg.unlocked():
    # The sweep: small sampled sub-pools only.
    cfg.design.state_per_mixture = True
    cfg.design.n_pool_states = 16 if smoke else 40
    cfg.design.include_full_pool = False
    cfg.design.state_kinds = ("subsample", "quality")
    cfg.reference.enabled = True
    cfg.design.shift_factors = (8.0,)
    cfg.design.subsample_max_fraction = 0.5
    # The pool the recommendation is for: bigger than every sweep state, one domain
    # scarce enough to force repetition, one partly duplicated.
    cfg.pool.deploy.fraction.math = 1.0 / 16
    cfg.pool.deploy.dup_rate.code = 0.25
    cfg.pool.deploy.quality.literature = 0.5
    cfg.validate.scale = "proxy"
    # Also the pick before the safe objective's check against uniform, to see on real
    # text what that check costs or saves (the same runs as the recommendation when the
    # check kept it).
    cfg.validate.mixtures = tuple(cfg.validate.mixtures) + ("unguarded",)
    # Recommend for the budget the validation trains at (the proxies' 51k tokens), so the
    # recommendation, its predictions and the realized outcomes are about one budget.
    cfg.target.optim.steps = cfg.proxy.optim.steps
    cfg.target.optim.batch_size = cfg.proxy.optim.batch_size
    cfg.target.model.seq_len = cfg.proxy.model.seq_len
    if transfer:
      preset = "proxy" if smoke else TRANSFER["preset"]
      cfg.target.model = model_cfg.model_preset(preset)
      cfg.target.model.seq_len = cfg.proxy.model.seq_len
      cfg.target.optim.steps = TRANSFER["steps"] * cfg.proxy.optim.steps
      cfg.target.optim.batch_size = TRANSFER["batch"] * cfg.proxy.optim.batch_size
      cfg.validate.scale = "target"
      cfg.validate.mixtures = TRANSFER_MIXTURES
  cfg.lock()
  return cfg
