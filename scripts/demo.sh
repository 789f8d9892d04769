#!/usr/bin/env bash
# The main job: the agent on real sample recordings, with a throwaway MQTT broker on
# loopback (Mosquitto when installed, else the embedded one) and an operator subscriber.
# No root, no apt. Options are passed on: bash scripts/demo.sh --speed 600
set -euo pipefail
EXTRAS=demo,report,fleet  # report: so that `edge-agent report` works in this venv too
source "$(dirname "$0")/_setup.sh"
exec .venv/bin/edge-agent demo "$@"
