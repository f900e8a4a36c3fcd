"""`sys/metrics` read as Prometheus and tools read it: `?format=prometheus` is the Prometheus
text format (0.0.4) that `prometheus-client`'s parser and, where installed, `promtool check
metrics` accept without a complaint; a scrape's Accept header gets OpenMetrics, which the
package's strict OpenMetrics parser accepts; the names follow Prometheus' conventions; and
without the format the answer is Vault's JSON. Reads VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT.
"""
import os
import shutil
import subprocess
import sys

import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as prometheus_families


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


addr, token, ca = os.environ["VAULT_ADDR"], os.environ["VAULT_TOKEN"], os.environ["VAULT_CACERT"]
auth = {"X-Vault-Token": token}
requests.get(f"{addr}/v1/secret/data/absent", headers=auth, verify=ca)  # one request to count

text = requests.get(f"{addr}/v1/sys/metrics?format=prometheus", headers=auth, verify=ca)
check(text.status_code == 200, f"prometheus format: {text.status_code} {text.text[:200]}")
check(text.headers["content-type"].startswith("text/plain; version=0.0.4"), text.headers["content-type"])
plain = {f.name: f for f in prometheus_families(text.text)}
check("coffer_http_requests" in plain and plain["coffer_http_requests"].type == "counter",
      f"0.0.4 counters: {sorted(plain)}")
if shutil.which("promtool"):
    lint = subprocess.run(["promtool", "check", "metrics"], input=text.text, text=True,
                          capture_output=True)
    check(lint.returncode == 0, f"promtool check metrics: {lint.stdout}{lint.stderr}")
else:
    print("metrics: promtool not installed, its check skipped (Debian: prometheus)")

r = requests.get(f"{addr}/v1/sys/metrics?format=prometheus", verify=ca,
                 headers=dict(auth, Accept="application/openmetrics-text;version=1.0.0"))
check(r.status_code == 200, f"openmetrics: {r.status_code} {r.text[:200]}")
check(r.headers["content-type"].startswith("application/openmetrics-text"), r.headers["content-type"])
families = {f.name: f for f in text_string_to_metric_families(r.text)}
for name, family in families.items():
    check(name.startswith("coffer_"), f"prefix: {name}")
    check(not name.endswith("_ms"), f"base units: {name}")
    if family.type == "counter":
        check(all(s.name.endswith("_total") or s.name.endswith("_created") for s in family.samples),
              f"counter samples end in _total: {name}")
for name in ["coffer_build_info", "coffer_audit_appends", "coffer_audit_spool_backlog_records",
             "coffer_last_contact_seconds", "coffer_http_requests",
             "coffer_http_request_duration_seconds", "coffer_raft_failure_tolerance",
             "coffer_raft_peer_lag_entries", "coffer_audit_spool_failed"]:
    check(name in families, f"{name} missing from {sorted(families)}")
build = families["coffer_build_info"].samples[0]
check(build.value == 1 and build.labels["version"] and build.labels["commit"], f"build_info: {build}")
kv = [s for s in families["coffer_http_requests"].samples
      if s.labels.get("class") == "kv" and s.labels.get("code") == "404"]
check(kv and kv[0].value >= 1, f"the 404 on kv counted: {families['coffer_http_requests'].samples}")
check(families["coffer_http_request_duration_seconds"].type == "histogram", "latency is a histogram")

# Every metric the alert rules and the Grafana dashboard in ops/ name exists.
import json
import re

import yaml

ops = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "ops")
exprs = [r["expr"] for g in yaml.safe_load(open(os.path.join(ops, "prometheus", "coffer-alerts.yml")))["groups"]
         for r in g["rules"]]
exprs += [t["expr"] for p in json.load(open(os.path.join(ops, "grafana", "coffer-dashboard.json")))["panels"]
          for t in p["targets"]]
samples = {s.name for f in families.values() for s in f.samples}
for expr in exprs:
    for name in re.findall(r"coffer_[a-z_]+", expr):
        if "backup" in name:  # exported once scheduled backups are configured
            continue
        check(name in samples, f"{name} (in {expr!r}) is not exported")

scrape = requests.get(f"{addr}/v1/sys/metrics", headers=dict(auth, Accept=(
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")),
    verify=ca)
check(scrape.headers["content-type"].startswith("application/openmetrics-text"),
      f"a Prometheus scrape's Accept header: {scrape.headers['content-type']}")

j = requests.get(f"{addr}/v1/sys/metrics", headers=auth, verify=ca)
check(j.status_code == 200 and "Gauges" in j.json() and "Counters" in j.json(), f"JSON: {j.text[:200]}")
anon = requests.get(f"{addr}/v1/sys/metrics?format=prometheus", verify=ca)
check(anon.status_code == 403, f"no token, no metrics by default: {anon.status_code}")
print("metrics: all checks passed")
