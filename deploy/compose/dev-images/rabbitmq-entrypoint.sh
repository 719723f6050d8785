#!/bin/sh
# STAND-IN FOR LOCAL TESTS ONLY. The rabbitmq image's part compose.yaml relies on: the
# default user from RABBITMQ_DEFAULT_USER/RABBITMQ_DEFAULT_PASS, reachable from other
# containers, logs on the console. Runs as root with HOME=/var/lib/rabbitmq (the cookie).
set -eu
mkdir -p /etc/rabbitmq
{
    echo "loopback_users = none"
    echo "listeners.tcp.default = 5672"
    echo "log.console = true"
    echo "log.console.level = warning"
    echo "log.file = false"
    if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
        echo "default_user = $RABBITMQ_DEFAULT_USER"
        echo "default_pass = ${RABBITMQ_DEFAULT_PASS:?RABBITMQ_DEFAULT_PASS is not set}"
    fi
} > /etc/rabbitmq/rabbitmq.conf
chmod 0600 /etc/rabbitmq/rabbitmq.conf
echo "[]." > /etc/rabbitmq/enabled_plugins
exec "$@"
