# LIBERO lives in its own virtual environment (.venv-libero); see docs/libero.md.
# test-libero serves a tiny randomly initialized checkpoint from the main environment (.venv),
# written into a temporary directory by `worldvla serve --random-init`; set
# WORLDVLA_LIBERO_CHECKPOINT=DIR to serve a checkpoint of your own instead.
.PHONY: test-libero

test-libero:
	@test -x $${WORLDVLA_SERVER_PYTHON:-.venv/bin/python} || { echo "test-libero needs the main environment (.venv) to serve the policy" >&2; exit 1; }
	bash scripts/setup_libero.sh
	MUJOCO_GL=$${MUJOCO_GL:-egl} .venv-libero/bin/python -m pytest -q -s -m libero tests/libero
