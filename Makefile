# LIBERO lives in its own virtual environment (.venv-libero); see docs/libero.md.
.PHONY: test-libero

test-libero:
	bash scripts/setup_libero.sh
	MUJOCO_GL=$${MUJOCO_GL:-egl} .venv-libero/bin/python -m pytest -q -s -m libero tests/libero
