"""The RegMix study: the default causal surface against RegMix's LightGBM on RegMix's own
1M-scale sweep of the Pile."""
