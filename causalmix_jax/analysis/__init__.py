"""Analysis of a finished study, for the report and for notebooks: the CART tree (`tree`),
the CATE interpretation of the surface (`interpretation`, which the analyse stage writes
to `analysis/interpretation.json`) and the figures (`plots`)."""
