#!/usr/bin/env bash
# Start the machine's PostgreSQL and Mosquitto if they are not answering (CI and fresh machines).
set -u
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! answers 5432; then
  echo "services: starting PostgreSQL"
  if [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
fi
if ! command -v mosquitto >/dev/null 2>&1; then
  echo "services: installing Mosquitto"
  (apt-get update -qq && apt-get install -y -qq mosquitto) >/dev/null 2>&1 || true
fi
if ! answers 1883; then
  echo "services: starting Mosquitto"
  mosquitto -d -c /etc/mosquitto/mosquitto.conf || true
fi
for _ in $(seq 1 30); do
  answers 5432 && answers 1883 && break
  sleep 1
done
answers 5432 || echo "services: WARNING PostgreSQL is not answering on 127.0.0.1:5432"
answers 1883 || echo "services: WARNING Mosquitto is not answering on 127.0.0.1:1883"
exit 0
