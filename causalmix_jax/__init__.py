"""causalmix_jax: data-mixture selection for language-model training by causal inference."""

__version__ = "0.1.0"
