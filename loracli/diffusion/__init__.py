"""Diffusion processes: EDM noise levels and samplers, IDDPM's Gaussian diffusion, training losses."""
