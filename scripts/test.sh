#!/usr/bin/env bash
# The test suite: Python environment, a real Mosquitto (installed from Debian's packages
# when missing and run as root), then pytest. Arguments go to pytest: bash scripts/test.sh -k mqtt
# The tests read the full recordings from ../shared/data beside the checkout.
set -euo pipefail
EXTRAS=test,demo,report,fleet
source "$(dirname "$0")/_setup.sh"
if ! command -v mosquitto_passwd >/dev/null || ! { command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; }; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients
  else
    echo "the tests start a real Mosquitto: sudo apt-get install mosquitto mosquitto-clients" >&2
    exit 1
  fi
fi
exec .venv/bin/python -m pytest "$@"
