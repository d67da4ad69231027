"""Cache files: names, tensor keys, fingerprints, atomic writes; the latent and text caching pipelines."""
