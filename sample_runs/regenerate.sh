#!/usr/bin/env bash
# Regenerates every sample run from its scenario file; the run dirs are the trainer's untouched output.
# Usage: bash sample_runs/regenerate.sh [SCENARIO ...]   (from the repository root; default: all ten)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ]; then
  scenarios=(mlm-labels-all-tokens mlm-labels-all-tokens-fixed mlm-lr-too-low mlm-lr-too-low-fixed
             kd-temperature-blowup kd-temperature-blowup-fixed gpt2-spike-plateau gpt2-spike-plateau-fixed
             factorized-embedding-stall factorized-embedding-stall-fixed)
fi
for name in "${scenarios[@]}"; do
  "$PY" -m analyzer.trainer --scenario "$name" --out "sample_runs/$name" --quiet
  echo "$name: $(grep -o '"wall_time_s": [0-9.]*' "sample_runs/$name/run.json")"
done
