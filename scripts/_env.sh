# Sourced by scripts/demo and scripts/test: make .venv in the repo root and
# install everything into it once (again only when pyproject.toml changes).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
# GPU users: ATS_TORCH="torch" (or a CUDA wheel spec) before running.
TORCH_SPEC="${ATS_TORCH:-torch==2.13.0}"
stamp="$VENV/.ats-wsi-installed"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/plugins/pyproject.toml" "$ROOT/scripts/_env.sh" \
  "$ROOT/native/pyproject.toml" "$ROOT/native/setup.py" "$ROOT/native/ats_wsi_jpeg.c" | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
if [ ! -x "$PY" ]; then
  echo "[ats-wsi] creating virtual environment at $VENV" >&2
  python3 -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "[ats-wsi] installing dependencies into $VENV (about a minute)" >&2
  "$PY" -m pip install -q --disable-pip-version-check --upgrade pip
  "$PY" -m pip install -q --disable-pip-version-check "$TORCH_SPEC"
  "$PY" -m pip install -q --disable-pip-version-check -e "$ROOT[dev,napari,distributed,megamnist,survival,regression]" -e "$ROOT/plugins"
  # optional C extension (cropped JPEG decoding for PatchReader; needs gcc and libjpeg headers):
  # without it PatchReader decodes whole tiles, same pixels
  "$PY" -m pip install -q --disable-pip-version-check "$ROOT/native" \
    || echo "[ats-wsi] warning: native/ (ats_wsi_jpeg) did not build; PatchReader decodes whole tiles" >&2
  rm -rf "$ROOT/native/build" "$ROOT/native/"*.egg-info
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
