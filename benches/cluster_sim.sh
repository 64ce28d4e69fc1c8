#!/usr/bin/env bash
# Cluster sizing simulation (issue 15, docs/design/cluster.md "Sizing"): what a fleet of
# CAMERAS cameras costs the shared PostgreSQL and the object store when nodes of
# CAMS_PER_NODE cameras group-commit their fragments as the design says.
#
#   bash benches/cluster_sim.sh            # 100,000 cameras, 1,000 per node, 20 s per run
#   CAMERAS=20000 SECONDS_PER_RUN=10 bash benches/cluster_sim.sh
#   PGURL=postgres://user@host:5432/db bash benches/cluster_sim.sh   # an existing server
#
# Without PGURL it starts a throwaway PostgreSQL (initdb as the `postgres` user when run as
# root) on a free port and removes it at the end. It measures, with pgbench against the
# real server:
#   1. fenced flush commits: one transaction per node flush = a FOR KEY SHARE fence on the
#      node's lease row, then one multi-row INSERT of the flush's fragment rows (rows of the
#      same shape and indexes as the fragment index), at several batch sizes;
#   2. the same batches unfenced (the fence's cost);
#   3. lease renewals (the non-key UPDATE every node runs every 2 s) alongside the commits.
# Then it prints the rows/s one primary sustained, how many such primaries the fleet's
# row rate needs, the lease churn, and the object writes per camera-hour and their
# monthly request cost at S3 Standard list prices ($0.005 per 1,000 PUTs).
set -euo pipefail

CAMERAS=${CAMERAS:-100000}
CAMS_PER_NODE=${CAMS_PER_NODE:-1000}
FRAGMENT_SECONDS=${FRAGMENT_SECONDS:-1}
MBITS=${MBITS:-2.08}                       # per camera
FLUSH_BYTES=${FLUSH_BYTES:-16777216}       # store.flush_bytes
FLUSH_AGE_MS=${FLUSH_AGE_MS:-250}          # store.flush_age
LEASE_RENEW_S=${LEASE_RENEW_S:-2}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
CLIENTS=${CLIENTS:-16}                     # concurrent nodes committing
BATCHES=${BATCHES:-"50 250 1000"}          # rows per flush commit
PUT_PRICE_PER_1000=${PUT_PRICE_PER_1000:-0.005}
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cluster-sim.XXXXXX")
chmod 755 "$WORK"
cleanup() {
  if [ -n "${PGDATA_DIR:-}" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

if [ -z "${PGURL:-}" ]; then
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  PGDATA_DIR="$WORK/pg"
  mkdir -p "$PGDATA_DIR"
  [ "$(id -u)" -eq 0 ] && chown postgres "$PGDATA_DIR" "$WORK"
  as_pg "$PGBIN/initdb" -D "$PGDATA_DIR" -A trust -U postgres >"$WORK/initdb.log" 2>&1
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$WORK/pg.log" -w \
    -o "-p $PORT -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=100" start >/dev/null
  PGURL="postgres://postgres@127.0.0.1:$PORT/postgres"
  echo "sim: throwaway PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on port $PORT (fsync on, synchronous_commit on)"
fi
PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$PGURL")

"${PSQL[@]}" <<SQL
SET client_min_messages = warning;
DROP TABLE IF EXISTS sim_fragments, sim_nodes;
CREATE TABLE sim_nodes (node_id text PRIMARY KEY, url text NOT NULL, epoch bigint NOT NULL,
                        expires_at timestamptz NOT NULL, state text NOT NULL);
INSERT INTO sim_nodes SELECT 'node-' || n, 'http://10.0.0.' || n || ':8080', 1,
                             now() + interval '1 day', 'live'
                        FROM generate_series(1, $CLIENTS) n;
CREATE TABLE sim_fragments (
  stream_id text NOT NULL, seq bigint NOT NULL, producer_ts_ms bigint NOT NULL,
  server_ts_ms bigint NOT NULL, duration_ms bigint NOT NULL, size bigint NOT NULL,
  object_key text NOT NULL, object_offset bigint NOT NULL, object_size bigint NOT NULL,
  content_hash text NOT NULL, session_id bigint NOT NULL,
  PRIMARY KEY (stream_id, seq));
CREATE INDEX sim_fragments_by_producer ON sim_fragments (stream_id, producer_ts_ms);
CREATE INDEX sim_fragments_by_object ON sim_fragments (object_key);
CREATE SEQUENCE IF NOT EXISTS sim_seq;
SQL

# One node flush: the fence, then the batch's rows for the node's cameras. Stream ids are
# 32 hex digits like the index's; each row is a new fragment number of one camera.
write_commit() { # $1 = rows, $2 = fenced (1/0), $3 = file
  {
    echo '\set node random(1, '"$CLIENTS"')'
    echo 'BEGIN;'
    if [ "$2" = 1 ]; then
      echo "SELECT 1 FROM sim_nodes WHERE node_id = 'node-' || :node AND epoch = 1 AND state = 'live' AND expires_at > now() FOR KEY SHARE;"
    fi
    cat <<SQL
INSERT INTO sim_fragments
SELECT md5((:node * $CAMS_PER_NODE + (s.seq % $CAMS_PER_NODE))::text), s.seq,
       1795600000000 + s.seq * 1000, 1795600000000 + s.seq * 1000, 1000, 260000,
       'segments/d1/node-' || :node || '-1-' || s.seq / $1 || '.seg',
       (s.seq % $1) * 260040, 260040, 'b3:' || md5(s.seq::text) || md5(s.seq::text), 1
  FROM (SELECT nextval('sim_seq') AS seq FROM generate_series(1, $1)) s;
COMMIT;
SQL
  } >"$3"
}
echo "UPDATE sim_nodes SET expires_at = now() + interval '6 s' WHERE node_id = 'node-' || (random() * $((CLIENTS - 1)) + 1)::int AND epoch = 1 AND state = 'live';" >"$WORK/renew.sql"

run() { # pgbench args...; prints "tps"
  "$PGBIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" "$@" "$PGURL" 2>&1 \
    | awk '/^tps = /{print $3}'
}

echo "sim: $CLIENTS concurrent committers, $SECONDS_PER_RUN s per run, load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-8s %-10s %12s %12s\n' rows fenced 'commits/s' 'rows/s'
best_rows=0
for b in $BATCHES; do
  for fenced in 0 1; do
    write_commit "$b" "$fenced" "$WORK/commit-$b-$fenced.sql"
    tps=$(run -f "$WORK/commit-$b-$fenced.sql")
    rows=$(python3 -c "print(round($tps * $b))")
    printf '%-8s %-10s %12.0f %12s\n' "$b" "$fenced" "$tps" "$rows"
    if [ "$fenced" = 1 ] && [ "$rows" -gt "$best_rows" ]; then best_rows=$rows; best_batch=$b; fi
  done
done
# Renewals at their real ratio to commits: a node renews every LEASE_RENEW_S and commits
# every flush; weight the two scripts accordingly and report the renewal rate reached.
write_commit 250 1 "$WORK/commit-mix.sql"
mix=$("$PGBIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" \
        -f "$WORK/commit-mix.sql@8" -f "$WORK/renew.sql@1" "$PGURL" 2>&1 | awk '/^tps = /{print $3}')
echo "sim: mixed fenced commits (250 rows) and renewals 8:1: $mix transactions/s"
rows_in_table=$("${PSQL[@]}" -tAc "SELECT count(*) FROM sim_fragments")
bytes_per_row=$("${PSQL[@]}" -tAc "SELECT pg_total_relation_size('sim_fragments') / greatest(count(*), 1) FROM sim_fragments")
echo "sim: $rows_in_table rows written, $bytes_per_row bytes per row on disk (heap + 3 indexes)"

python3 - "$CAMERAS" "$CAMS_PER_NODE" "$FRAGMENT_SECONDS" "$MBITS" "$FLUSH_BYTES" "$FLUSH_AGE_MS" \
  "$LEASE_RENEW_S" "$best_rows" "$best_batch" "$PUT_PRICE_PER_1000" "$bytes_per_row" <<'PY'
import math, sys
(cams, per_node, frag_s, mbits, flush_bytes, flush_age_ms, renew_s, best_rows, best_batch,
 put_price, row_bytes) = sys.argv[1:]
cams, per_node, frag_s = int(cams), int(per_node), float(frag_s)
mbits, flush_bytes, flush_age = float(mbits), int(flush_bytes), int(flush_age_ms) / 1000
renew_s, best_rows, best_batch = float(renew_s), int(best_rows), int(best_batch)
put_price, row_bytes = float(put_price), int(row_bytes)
nodes = math.ceil(cams / per_node)
node_bytes_s = per_node * mbits * 1e6 / 8
# A node flushes when its batch reaches flush_bytes or its oldest fragment waited
# flush_age, whichever comes first.
flushes_s = max(node_bytes_s / flush_bytes, 1 / flush_age)
rows_s = cams / frag_s
rows_per_flush = (per_node / frag_s) / flushes_s
writes_cam_h = flushes_s * nodes * 3600 / cams
print(f"fleet: {cams:,} cameras x {mbits} Mbit/s, {frag_s:g} s fragments, {nodes} nodes of {per_node:,}")
print(f"lease churn: {nodes / renew_s:,.0f} renewals/s cluster-wide ({1 / renew_s:g}/s per node)")
print(f"index: {rows_s:,.0f} fragment rows/s cluster-wide, {per_node / frag_s:,.0f} per node in "
      f"{flushes_s:.1f} flush commits/s of {rows_per_flush:,.0f} rows")
print(f"one primary here sustained {best_rows:,} fenced rows/s (best batch {best_batch}): "
      f"the fleet needs {rows_s / best_rows:.1f}x this 2-core server's row rate")
print(f"index growth: {rows_s * row_bytes / 1e6:,.1f} MB/s = {rows_s * row_bytes * 86400 / 1e12:,.2f} TB/day at {row_bytes} B/row")
print(f"object writes: {writes_cam_h:,.1f} per camera-hour ({flush_bytes / 2**20:g} MiB flushes, {flush_age * 1000:g} ms age)")
month_h = 730
cost = writes_cam_h * month_h * put_price / 1000
print(f"PUT requests: ${cost:.3f} per camera-month, ${cost * cams:,.0f} per month for the fleet "
      f"(S3 Standard ${put_price}/1,000 PUTs); one object per fragment would be "
      f"${3600 / frag_s * month_h * put_price / 1000:.2f} per camera-month")
PY
