#!/usr/bin/env bash
# Prints a PostgreSQL superuser URL for the test suite, bringing a local server up if needed.
#
# TEST_DATABASE_URL, when set, is used as is (CI with its own server). Otherwise the local
# Debian cluster is used: the postgresql package is installed when missing, the first cluster
# is created/started, and a password-login superuser role for the tests is ensured. The
# suite then creates (and drops) a database of its own on that server for every run.
set -euo pipefail

if [[ -n "${TEST_DATABASE_URL:-}" ]]; then
    echo "$TEST_DATABASE_URL"
    exit 0
fi

log() { echo "ensure-test-postgres: $*" >&2; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

if ! command -v pg_lsclusters >/dev/null 2>&1; then
    log "installing the postgresql package"
    as_root apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >&2
fi

cluster=$(pg_lsclusters --no-header | head -n 1 || true)
if [[ -z "$cluster" ]]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    log "creating cluster $version/main"
    as_root pg_createcluster "$version" main >&2
    cluster=$(pg_lsclusters --no-header | head -n 1)
fi
read -r version name port status _ <<<"$cluster"
if [[ "$status" != online* ]]; then
    log "starting cluster $version/$name"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start >&2
fi

# A password unlike the role name: the tool scrubs passwords from its output, and a password
# equal to the user name would scrub the user name too, which hides what tests should see.
role=abg_test
password=abg_test_pw
as_root runuser -u postgres -- psql -p "$port" -qtAX -v ON_ERROR_STOP=1 >&2 <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') THEN
        CREATE ROLE $role LOGIN SUPERUSER PASSWORD '$password';
    ELSE
        ALTER ROLE $role LOGIN SUPERUSER PASSWORD '$password';
    END IF;
END
\$\$;
SQL

echo "postgresql://$role:$password@127.0.0.1:$port/postgres"
