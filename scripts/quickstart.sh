#!/usr/bin/env bash
# Set up (if needed) and run the main job: collect -> tokenizer -> tokenize -> train ->
# evaluate policy and world model -> report, on the embedded Meta-World benchmark.
# Resumable: run it again after an interruption. Extra arguments go to `worldvla quickstart`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/worldvla quickstart "$@"
