"""The plausible range of a slide's µm/px, shared by every room that checks one (slides,
encoder specs, model configs) from the floor they all stand on."""
from __future__ import annotations

__all__ = ["MAX_MPP", "MIN_MPP"]

MIN_MPP = 0.01
"""Finest level-0 µm/px believed (10 nm, past any light microscope): an Aperio
``MPP = 1e-7`` or an OME size in picometres would size reads in petabytes."""
MAX_MPP = 1000.0
"""Coarsest level-0 µm/px believed (1 mm per pixel): no slide scan is coarser."""
