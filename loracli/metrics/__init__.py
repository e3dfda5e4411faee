"""Metrics: FID through clean-fid with user-supplied Inception weights, reference statistics, provenance."""
