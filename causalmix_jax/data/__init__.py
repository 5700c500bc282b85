"""Data: domain sources, tokenisation, the pool and its states, covariates, and the
grain mixing pipelines (see docs/architecture.md, "Data")."""
