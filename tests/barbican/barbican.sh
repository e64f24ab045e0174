#!/bin/sh
# A private Barbican (Debian's barbican-api) on loopback for vmsup's tests and demo.
#
#   barbican.sh start DIR [WATCH_PID]   start it in DIR (created; absolute or relative),
#                                       print its URL once it answers
#   barbican.sh stop DIR                stop it (SIGTERM, then SIGKILL after 10 s)
#
# No Keystone: /v1 is served by Barbican's unauthenticated pipeline, which takes the
# project from the X-Project-Id header. Config, database and log all live in DIR; nothing
# is written under /etc or /var. With WATCH_PID the server exits when that process does.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
py=/usr/bin/python3 # Debian's: the python3 first on PATH may not see python3-barbican
paste_src=/etc/barbican/barbican-api-paste.ini

die() { printf 'barbican.sh: %s\n' "$*" >&2; exit 1; }

# The pid in DIR/pid if it is still our server (the pid may have been reused).
server_pid() {
  [ -f "$1/pid" ] || return 1
  pid=$(cat "$1/pid")
  { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF "serve.py $1" || return 1
  echo "$pid"
}

start() {
  mkdir -p "$1"
  dir=$(cd "$1" && pwd)
  watch=${2:-}
  [ -x "$py" ] || die "$py not found (apt-get install python3)"
  if [ ! -f "$paste_src" ] || ! "$py" -c 'import barbican.api.app, paste.deploy' 2>/dev/null; then
    die "Barbican is not installed (apt-get install --no-install-recommends barbican-api)"
  fi
  if pid=$(server_pid "$dir"); then die "a Barbican already runs in $dir (pid $pid)"; fi

  mkdir -p "$dir/.barbican"
  kek=$(head -c 32 /dev/urandom | base64)
  umask 077
  cat >"$dir/.barbican/barbican.conf.in" <<CONF
[DEFAULT]
sql_connection = sqlite:///$dir/barbican.sqlite
db_auto_create = true
host_href = @HOST_HREF@
[secretstore]
enabled_secretstore_plugins = store_crypto
[crypto]
enabled_crypto_plugins = simple_crypto
[simple_crypto_plugin]
kek = $kek
CONF
  sed 's|^/v1: barbican-api-keystone$|/v1: barbican_api|' "$paste_src" >"$dir/paste.ini"
  grep -q '^/v1: barbican_api$' "$dir/paste.ini" || die "no '/v1: barbican-api-keystone' route in $paste_src"

  rm -f "$dir/ready" "$dir/url"
  mkfifo "$dir/ready"
  # A clean environment with HOME=DIR: oslo.config then reads DIR/.barbican/barbican.conf.
  # setsid: out of the caller's session and process group, so its signals are its own.
  env -i HOME="$dir" PATH=/usr/bin:/bin LANG=C.UTF-8 \
    setsid "$py" "$here/serve.py" "$dir" ${watch:+"$watch"} \
    </dev/null 3>"$dir/ready" >"$dir/barbican.log" 2>&1 &
  echo $! >"$dir/pid"
  # The server writes its URL to the fifo once it serves; EOF means it died first.
  url=""
  read -r url <"$dir/ready" || true
  rm -f "$dir/ready"
  if [ -z "$url" ]; then
    tail -n 20 "$dir/barbican.log" >&2
    die "Barbican did not start (log: $dir/barbican.log)"
  fi
  echo "$url"
}

stop() {
  [ -d "$1" ] || return 0
  dir=$(cd "$1" && pwd)
  pid=$(server_pid "$dir") || { rm -f "$dir/pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  # Wait on a pidfd (the server is not our child, so no wait(1)).
  "$py" -c 'import os, select, sys
try:
    fd = os.pidfd_open(int(sys.argv[1]))
except ProcessLookupError:
    sys.exit(0)
sys.exit(0 if select.select([fd], [], [], 10)[0] else 1)' "$pid" || kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/pid"
}

case "${1:-}" in
  start) [ $# -ge 2 ] || die "usage: barbican.sh start DIR [WATCH_PID]"; start "$2" "${3:-}" ;;
  stop) [ $# -eq 2 ] || die "usage: barbican.sh stop DIR"; stop "$2" ;;
  *) die "usage: barbican.sh start DIR [WATCH_PID] | stop DIR" ;;
esac
