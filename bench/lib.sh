# bench/lib.sh: process and port helpers shared by bench/run.sh and bench/soak.sh (sourced).
# The sourcing script defines die() and sets LOG_DIR (where each started process logs) and
# PIDS=() (what its cleanup stops).

# start NAME CMD...: in the background, output to $LOG_DIR/NAME.log; the PID goes to $STARTED.
start() {
  local name=$1
  shift
  "$@" >"$LOG_DIR/$name.log" 2>&1 &
  STARTED=$!
  PIDS+=("$STARTED")
}

stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

USED_PORTS=" "
free_port() { # a loopback port nothing listens on (below the ephemeral range), not handed out yet
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    [[ $USED_PORTS == *" $p "* ]] && continue
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
    USED_PORTS+="$p "
    echo "$p"
    return
  done
}

wait_port() { # wait_port PORT PID NAME
  local deadline=$((SECONDS + 20))
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    kill -0 "$2" 2>/dev/null || { tail -20 "$LOG_DIR/$3.log" >&2; die "$3 exited"; }
    ((SECONDS < deadline)) || die "$3 does not listen on $1"
    sleep 0.05
  done
}
