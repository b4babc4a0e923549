#!/bin/sh
# Starts Orthanc with /etc/orthanc-facade/orthanc.json; ORTHANC_HTTP_PORT (default 8042) replaces its HttpPort, for
# a second Orthanc on the same host network. Arguments are passed to Orthanc (e.g. --verbose).
set -eu
port="${ORTHANC_HTTP_PORT:-8042}"
case "$port" in *[!0-9]*|"") echo "ORTHANC_HTTP_PORT must be a port number, got '$port'" >&2; exit 2 ;; esac
mkdir -p /tmp/orthanc
sed "s/\"HttpPort\": 8042,/\"HttpPort\": $port,/" /etc/orthanc-facade/orthanc.json > /tmp/orthanc/orthanc.json
exec /usr/sbin/Orthanc "$@" /tmp/orthanc/orthanc.json
