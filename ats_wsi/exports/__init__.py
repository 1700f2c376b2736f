"""What users take away from a prediction into their own tools.

- :mod:`.features`: the sampled patches' features per slide as HDF5 in the
  layout TRIDENT and CLAM read (``predict --export-features``);
- :mod:`.patches`: the top-K attention patches as PNG and a contact sheet
  (``predict --export-patches K``);
- :mod:`.curves`: ROC / PR curves (CSV, PNG), AUPRC and the operating point
  of a labelled run (``metrics.json``);
- :mod:`.slide_exports`: what ``predict`` writes per slide on request, and
  the files its done marker vouches for.
"""
from __future__ import annotations

from .features import feature_arrays, require_h5py, write_features_h5
from .patches import MAX_EXPORT_PATCHES, top_patches, write_top_patches
from .slide_exports import export_files, outline_roi, write_slide_exports

__all__ = ["feature_arrays", "require_h5py", "write_features_h5", "MAX_EXPORT_PATCHES", "top_patches",
           "write_top_patches", "export_files", "outline_roi", "write_slide_exports"]
