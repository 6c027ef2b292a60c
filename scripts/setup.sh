#!/usr/bin/env bash
# Set up a fresh machine: system libraries for headless rendering, a virtual environment
# in .venv, and the package with its pinned dependencies. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Headless OpenGL for MuJoCo (EGL through Mesa's llvmpipe; no display, no GPU needed).
need_apt=()
ldconfig -p | grep -q 'libEGL.so.1' || need_apt+=(libegl1)
ldconfig -p | grep -q 'libGL.so.1' || need_apt+=(libgl1)
[ -e /usr/share/glvnd/egl_vendor.d/50_mesa.json ] || need_apt+=(libegl-mesa0 libgl1-mesa-dri)
# A C++ compiler for torch.compile on CPU (inductor), which the mt50 training preset uses.
command -v g++ >/dev/null || need_apt+=(g++)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] installing system packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.worldvla-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing worldvla and pinned dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[metaworld,dev]'
  touch "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import worldvla, torch; print("worldvla", worldvla.__version__, "torch", torch.__version__)')"
