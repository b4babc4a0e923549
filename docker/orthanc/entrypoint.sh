#!/bin/sh
# Starts Orthanc with /etc/orthanc-facade/orthanc.json (docs/containers.md). Arguments go to Orthanc (--verbose).
#   ORTHANC_HTTP_PORT  its HTTP port (default 8042), for a second Orthanc on the same host network;
#   ORTHANC_LISTEN_ALL=1  listen on every interface and answer remote clients (an engine with a bridge network:
#                         publish the port on 127.0.0.1 then). Default: 127.0.0.1 only, loopback clients only.
set -eu
port="${ORTHANC_HTTP_PORT:-8042}"
case "$port" in *[!0-9]*|"") echo "ORTHANC_HTTP_PORT must be a port number, got '$port'" >&2; exit 2 ;; esac
mkdir -p /tmp/orthanc
if [ "${ORTHANC_LISTEN_ALL:-0}" = 1 ]; then
  sed -e "s/\"HttpPort\": 8042,/\"HttpPort\": $port,/" -e 's/"RemoteAccessAllowed": false,/"RemoteAccessAllowed": true,/' \
    /etc/orthanc-facade/orthanc.json > /tmp/orthanc/orthanc.json
  exec /usr/sbin/Orthanc "$@" /tmp/orthanc/orthanc.json
fi
sed "s/\"HttpPort\": 8042,/\"HttpPort\": $port,/" /etc/orthanc-facade/orthanc.json > /tmp/orthanc/orthanc.json
# Orthanc 1.10 has no listen-address setting: loopback_bind.so makes its wildcard bind a loopback one.
LD_PRELOAD=/usr/local/lib/orthanc-facade/loopback_bind.so exec /usr/sbin/Orthanc "$@" /tmp/orthanc/orthanc.json
