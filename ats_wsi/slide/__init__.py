"""The lazy tile pyramid: open_slide and Slide."""
