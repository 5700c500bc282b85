"""Causal response surfaces over (mixture, pool covariates), their baselines, and the
planted-truth world they are tested on."""
