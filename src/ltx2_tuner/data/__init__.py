"""Datasets: config, media decoding (PyAV), audio front end, buckets, frame windows, cached batches."""
