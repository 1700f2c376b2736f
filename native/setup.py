"""Build of the ``ats_wsi_jpeg`` C extension: links the system libjpeg(-turbo).

Needs a C compiler and libjpeg's headers (Debian: ``build-essential
libjpeg62-turbo-dev``); ``scripts/_env.sh`` installs it with ``pip install ./native``.
ats-wsi works without it (PatchReader then decodes whole tiles).
"""
from setuptools import Extension, setup

setup(
    ext_modules=[Extension("ats_wsi_jpeg", ["ats_wsi_jpeg.c"], libraries=["jpeg"],
                           extra_compile_args=["-O2", "-std=c99"])],
    py_modules=[],
)
