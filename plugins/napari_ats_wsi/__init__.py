"""napari plugin for ats-wsi (npe2 manifest ``napari.yaml``)."""
