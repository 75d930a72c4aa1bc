#!/bin/bash
# Build the fakemic ALSA plugin and write its config into DIR (default /tmp/mica-alsa), using the
# shared test tool ../shared/tools/alsa-fakemic (or $MICA_SHARED/tools/alsa-fakemic).
# Needs: apt-get install -y --no-install-recommends libasound2-dev alsa-utils gcc ; python3 + numpy.
# Then:  export ALSA_CONFIG_PATH=DIR/mica-alsa.conf   (tests/fixtures_alsa.py reuses it, no rebuild)
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${MICA_SHARED:-$REPO/../shared}/tools/alsa-fakemic
DIR=${1:-/tmp/mica-alsa}
if [ ! -f "$TOOLS/setup_fake_alsa.sh" ]; then
    echo "setup_fake_alsa: shared tools not found at $TOOLS (set MICA_SHARED)" >&2
    exit 1
fi
PYTHON=${PYTHON:-$(command -v python3 || command -v python)} bash "$TOOLS/setup_fake_alsa.sh" "$DIR"
