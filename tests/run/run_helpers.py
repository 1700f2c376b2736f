"""Values shared by the tests of run/ (the fixtures are in conftest.py)."""

TINY = dict(n_patches=4, patch_size=64, feature_dim=8, low_downsample=16.0)
"""A model small enough for tests: 4 patches of 64 px, 8 features, the low view at downsample 16."""
