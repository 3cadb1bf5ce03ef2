#!/usr/bin/env bash
# make demo: the tool end to end on examples/artists.csv, with no OpenAI key and no setup.
#
# The bios come from the project's stand-in API server (tests/support/fake_openai.py, a
# process on 127.0.0.1), never from OpenAI. PostgreSQL is brought up the way `make test` does
# it (scripts/ensure-test-postgres.sh: TEST_DATABASE_URL if set, else the local cluster,
# installed and started if needed). The demo creates a database of its own, runs the job,
# shows the summary, `status`, a few JSONL lines and table rows, then stops what it started
# (the stand-in server; PostgreSQL only if it was not running before) and deletes its
# database and temporary files, also when it fails or is interrupted.
#
# PY: the Python of the project's virtualenv (make passes it; default .venv/bin/python).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
PY=${PY:-.venv/bin/python}
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
bin=$(dirname "$PY")
input="$root/examples/artists.csv"
model=gpt-4.1-mini
# Only the stand-in ever sees this key; it is never printed.
stand_in_key=sk-demo-stand-in-not-a-real-key

say() { printf '\n==> %s\n' "$*"; }
banner() {
    printf '%s\n' "------------------------------------------------------------------------------"
    printf '%s\n' "$@"
    printf '%s\n' "------------------------------------------------------------------------------"
}
as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

banner "artist-bio-gen demo. The bios in this demo come from a STAND-IN API server on" \
    "127.0.0.1 (tests/support/fake_openai.py), NOT from OpenAI: no key is needed or used."

work=$(mktemp -d "${TMPDIR:-/tmp}/artist-bio-gen-demo.XXXXXX")
fake_pid=""
admin_url=""
demo_db="abg_demo_$$_$RANDOM"
stop_cluster=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$fake_pid" ]]; then
        kill "$fake_pid" 2>/dev/null || true
        wait "$fake_pid" 2>/dev/null || true
        echo "demo: stopped the stand-in API server (pid $fake_pid)"
    fi
    if [[ -n "$admin_url" ]]; then
        ADMIN_URL="$admin_url" DEMO_DB="$demo_db" "$PY" - <<'PY' || true
import os, psycopg
with psycopg.connect(os.environ["ADMIN_URL"], autocommit=True) as conn:
    conn.execute(f'DROP DATABASE IF EXISTS "{os.environ["DEMO_DB"]}" WITH (FORCE)')
PY
        echo "demo: dropped the demo database $demo_db"
    fi
    if [[ -n "$stop_cluster" ]]; then
        # shellcheck disable=SC2086  # "version name": two words on purpose
        as_root pg_ctlcluster --skip-systemctl-redirect $stop_cluster stop || true
        echo "demo: stopped PostgreSQL $stop_cluster (the demo started it)"
    fi
    rm -rf "$work"
    echo "demo: removed $work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- PostgreSQL, as `make test` brings it up --------------------------------------------------
cluster_online() {
    command -v pg_lsclusters >/dev/null 2>&1 &&
        [[ "$(pg_lsclusters --no-header | head -n 1 | awk '{print $4}')" == online* ]]
}
was_online=yes
if [[ -z "${TEST_DATABASE_URL:-}" ]] && ! cluster_online; then
    was_online=no
fi
say "PostgreSQL (scripts/ensure-test-postgres.sh)"
admin_url=$(scripts/ensure-test-postgres.sh)
if [[ "$was_online" == no ]]; then
    stop_cluster=$(pg_lsclusters --no-header | head -n 1 | awk '{print $1, $2}')
    echo "started PostgreSQL $stop_cluster; the demo stops it at the end"
else
    echo "using the PostgreSQL that was already running (left running)"
fi

# A database of the demo's own, holding the user's table with the example artists (no bio).
demo_url=$(ADMIN_URL="$admin_url" DEMO_DB="$demo_db" INPUT="$input" "$PY" - <<'PY'
import os
from urllib.parse import urlsplit

import psycopg

from artist_bio_gen.core.reader import ArtistReader

admin, name = os.environ["ADMIN_URL"], os.environ["DEMO_DB"]
with psycopg.connect(admin, autocommit=True) as conn:
    conn.execute(f'CREATE DATABASE "{name}"')
url = urlsplit(admin)._replace(path="/" + name).geturl()
with psycopg.connect(url, autocommit=True) as conn, ArtistReader(os.environ["INPUT"]) as reader:
    conn.execute(
        "CREATE TABLE artists (id UUID PRIMARY KEY, name TEXT NOT NULL, bio TEXT, "
        "updated_at TIMESTAMPTZ DEFAULT now())"
    )
    for artist in reader:
        conn.execute("INSERT INTO artists (id, name) VALUES (%s, %s)", (artist.artist_id, artist.name))
print(url)
PY
)
echo "created the demo database $demo_db with table artists (the example artists, no bios)"

# --- the stand-in API server ------------------------------------------------------------------
say "the stand-in API server (python -m tests.support.fake_openai)"
"$PY" -m tests.support.fake_openai --latency 0.15 >"$work/stand-in.url" &
fake_pid=$!
for _ in $(seq 100); do
    [[ -s "$work/stand-in.url" ]] && break
    kill -0 "$fake_pid" 2>/dev/null || { echo "demo: the stand-in server did not start" >&2; exit 1; }
    sleep 0.1
done
base_url=$(head -n 1 "$work/stand-in.url")
echo "stand-in API server (pid $fake_pid) at $base_url"

# The tool runs in the work directory with a clean environment: no .env of the clone and no
# OPENAI_* setting of the shell can reach it, and its files stay in the work directory.
tool() {
    (cd "$work" && env -i PATH="$PATH" HOME="$HOME" LANG="${LANG:-C.UTF-8}" TERM="${TERM:-dumb}" \
        OPENAI_API_KEY="$stand_in_key" OPENAI_BASE_URL="$base_url" DATABASE_URL="$demo_url" \
        "$bin/artist-bio-gen" "$@")
}

say "artist-bio-gen --input examples/artists.csv --model $model --max-workers 4"
set +e
tool --input "$input" --model "$model" --max-workers 4
code=$?
set -e
echo "exit code $code"

say "artist-bio-gen status"
set +e
tool status
status_code=$?
set -e

say "the first lines of out.jsonl (cut at 200 characters)"
head -n 3 "$work/out.jsonl" | cut -c 1-200

say "the table: SELECT name, left(bio, 60) FROM artists ORDER BY name LIMIT 5"
DEMO_URL="$demo_url" "$PY" - <<'PY'
import os

import psycopg

with psycopg.connect(os.environ["DEMO_URL"]) as conn:
    rows = conn.execute("SELECT name, left(bio, 60) FROM artists ORDER BY name LIMIT 5").fetchall()
for name, bio in rows:
    print(f"  {name:<28} {bio}...")
PY

echo
banner "Done. Every bio above came from the STAND-IN server, not from OpenAI. With a key:" \
    "  artist-bio-gen --input your.csv --model gpt-4.1-mini   (README, Quick start)"
if [[ "$code" -ne 0 || "$status_code" -ne 0 ]]; then
    echo "demo: the run exited $code and status $status_code; expected 0 and 0" >&2
    exit 1
fi
