"""Ray Tune search spaces over the pipeline's config (Table 3 of the paper and more)."""
