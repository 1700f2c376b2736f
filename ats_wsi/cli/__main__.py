"""``python -m ats_wsi.cli``: the ``ats-wsi`` command (as torchrun runs it)."""
import sys

from . import main

sys.exit(main())
