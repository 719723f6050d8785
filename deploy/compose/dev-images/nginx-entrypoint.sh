#!/bin/sh
# STAND-IN FOR LOCAL TESTS ONLY. What the nginx image's /docker-entrypoint.sh does for
# compose.yaml: source /docker-entrypoint.d/*.envsh (15-carve-body-size.envsh exports
# NGINX_CLIENT_MAX_BODY_SIZE), render /etc/nginx/templates/*.template into
# /etc/nginx/conf.d/ with envsubst limited to the variables matching NGINX_ENVSUBST_FILTER,
# then run the command.
set -eu
for script in /docker-entrypoint.d/*.envsh; do
    [ -f "$script" ] || continue
    # shellcheck disable=SC1090
    . "$script"
done
filter=${NGINX_ENVSUBST_FILTER:-}
vars=$(env | cut -d= -f1 | grep -E "${filter:-.}" | sed 's/^/$/' | tr '\n' ' ')
for template in /etc/nginx/templates/*.template; do
    [ -f "$template" ] || continue
    name=$(basename "$template" .template)
    envsubst "$vars" < "$template" > "/etc/nginx/conf.d/$name"
done
exec "$@"
