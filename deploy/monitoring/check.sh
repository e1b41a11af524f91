#!/usr/bin/env bash
# deploy/monitoring/check.sh: the monitoring files, checked offline with promtool.
#
#   1. promtool check rules alerts.yaml         (syntax, PromQL, templates)
#   2. promtool test rules alerts.test.yaml     (every alert fires when it should, only then)
#   3. every PromQL expression of grafana-dashboard.json parses: they are written out as
#      recording rules (Grafana's $__rate_interval as 5m, $job as .*) and checked the same way
#
# Which metric names the files may use is checked against the running gateway by the Rust
# integration test tests/it/monitoring.rs (cargo test), not here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

command -v promtool >/dev/null || {
  echo "deploy/monitoring/check.sh: promtool is missing (Debian package prometheus)" >&2
  exit 1
}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kizen-monitoring.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

promtool check rules alerts.yaml
promtool test rules alerts.test.yaml

python3 - grafana-dashboard.json "$tmp/dashboard-rules.yaml" <<'PY'
import json, sys

dashboard = json.load(open(sys.argv[1]))
exprs = []
def walk(node, title):
    if isinstance(node, dict):
        title = node.get("title", title)
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                exprs.append((title, value))
            else:
                walk(value, title)
    elif isinstance(node, list):
        for item in node:
            walk(item, title)
walk(dashboard, "")
if not exprs:
    sys.exit("no expressions found in the dashboard")
# A rules file: one recording rule per expression (JSON is YAML).
rules = [{"record": f"dashboard:expr:{i}",
          "expr": expr.replace("$__rate_interval", "5m").replace("$job", ".*")}
         for i, (_, expr) in enumerate(exprs)]
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"{len(exprs)} dashboard expressions")
PY
promtool check rules "$tmp/dashboard-rules.yaml" | sed 's#'"$tmp"'/##'
