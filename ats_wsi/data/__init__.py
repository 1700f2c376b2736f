"""Datasets over slide manifests, and synthetic data (Mega-MNIST, synthetic slides)."""
from .synthetic import SyntheticSlide, load_lesions, load_synthetic_slide, make_slide_set, write_synthetic_slide
