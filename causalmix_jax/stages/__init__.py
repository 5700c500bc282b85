"""The pipeline's stages, one module each, every one `run(cfg, workdir) -> Path`: read
upstream artifacts through `study.Study`, call library functions, write this stage's
artifacts. `pipeline.STAGES` wires them together."""
