import subprocess
import sys


def test_import_is_light():
    """`import ats_wsi` must not pull torch, napari or dask.distributed."""
    code = (
        "import sys, ats_wsi; "
        "bad = [m for m in ('torch', 'napari', 'distributed', 'PyQt6') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_errors_name_the_file():
    import pickle

    from ats_wsi import CorruptSlideError, SlideError

    err = CorruptSlideError("/data/a.svs", "truncated tile 3")
    assert isinstance(err, SlideError)
    assert "/data/a.svs" in str(err) and "truncated tile 3" in str(err)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is CorruptSlideError and back.path == "/data/a.svs"
