#!/usr/bin/env python3
"""Side by side: etcd, OpenBao and Coffer, three nodes each, TLS on client and peer links,
all on this machine's loopback, driven by the same load generator (wrk) with the same
workloads. Run through `scripts/bench-peers.sh`, which installs and builds what it needs.

Workloads (256-byte values; writes to random keys; reads of 1,000 pre-written keys; load sent
to the leader; `wrk -t2`, or `-t1 -c1` for one client):

  write, 1 client / write, 64 clients / linearizable read, 64 clients / stale read, 64 clients

etcd uses its JSON gateway (`/v3/kv/put`, `/v3/kv/range`, `serializable` for the stale read).
OpenBao and Coffer use the KV v2 API with a root token; OpenBao is measured without an audit
device and with a file audit device (its reads are not linearizable either way); every Coffer
request is audited to its fsynced spool.

Then, per system: SIGKILL of the leader -> first acknowledged write on a survivor (median of
--failover-rounds; the killed node is restarted between rounds), and after --secrets distinct
secrets the RSS and disk of each node and the size of a snapshot.
"""

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALUE = "v" * 256
KEYS = 1000


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, cond, timeout=120.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except Exception:  # a server still starting answers with errors
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


class Http:
    """A small HTTPS client trusting one CA."""

    def __init__(self, ca, token_header=None):
        self.ctx = ssl.create_default_context(cafile=ca)
        self.headers = dict([token_header]) if token_header else {}

    def call(self, method, url, body=None, timeout=5.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers=self.headers)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as r:
                text = r.read()
                return json.loads(text) if text else {}
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{method} {url}: {e.code} {e.read()[:500]!r}") from None


def make_certs(d):
    """A CA and one server/client certificate for 127.0.0.1, made with openssl."""
    ca_key, ca, key, csr, cert = (os.path.join(d, n) for n in
                                  ("ca.key", "ca.pem", "node.key", "node.csr", "node.pem"))
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                "extendedKeyUsage=serverAuth,clientAuth\n")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run("openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", ca_key)
    run("openssl", "req", "-x509", "-new", "-key", ca_key, "-days", "2", "-subj", "/CN=bench-ca",
        "-out", ca)
    run("openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", key + ".ec")
    run("openssl", "pkcs8", "-topk8", "-nocrypt", "-in", key + ".ec", "-out", key)
    run("openssl", "req", "-new", "-key", key, "-subj", "/CN=127.0.0.1", "-out", csr)
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-days", "2", "-extfile", ext, "-out", cert)
    return ca, cert, key


# Every server this suite started, killed when it ends however it ends.
SPAWNED = []


class Proc:
    """A server process that can be SIGKILLed and started again with the same command."""

    def __init__(self, argv, logfile, env=None, cwd=None):
        self.argv, self.logfile, self.env, self.cwd = argv, logfile, env, cwd
        self.p = None
        SPAWNED.append(self)
        self.start()

    def start(self):
        out = open(self.logfile, "ab")
        self.p = subprocess.Popen(self.argv, stdout=out, stderr=out, env=self.env, cwd=self.cwd,
                                  start_new_session=True)

    def kill(self):
        if self.p and self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait()

    @property
    def pid(self):
        return self.p.pid


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def du_mb(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total / (1024 * 1024)


# --- the systems -------------------------------------------------------------------------

class Etcd:
    name = "etcd"

    def __init__(self, work, certs):
        self.ca, cert, key = certs
        self.http = Http(self.ca)
        ports = [(free_port(), free_port()) for _ in range(3)]
        initial = ",".join(f"e{i}=https://127.0.0.1:{p}" for i, (_, p) in enumerate(ports, 1))
        self.urls, self.procs, self.dirs = [], [], []
        for i, (client, peer) in enumerate(ports, 1):
            data = os.path.join(work, f"etcd{i}")
            url = f"https://127.0.0.1:{client}"
            argv = ["etcd", "--name", f"e{i}", "--data-dir", data,
                    "--listen-client-urls", url, "--advertise-client-urls", url,
                    "--listen-peer-urls", f"https://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls", f"https://127.0.0.1:{peer}",
                    "--initial-cluster", initial, "--initial-cluster-state", "new",
                    # Clients verify the server; wrk presents no client certificate.
                    "--cert-file", cert, "--key-file", key,
                    "--peer-cert-file", cert, "--peer-key-file", key,
                    "--peer-trusted-ca-file", self.ca, "--peer-client-cert-auth",
                    "--logger", "zap", "--log-level", "warn"]
            self.procs.append(Proc(argv, data + ".log"))
            self.urls.append(url)
            self.dirs.append(data)
        wait_for("etcd's leader", lambda: self.leader() is not None)

    def leader(self):
        for i, url in enumerate(self.urls):
            if self.procs[i].p.poll() is not None:
                continue
            try:
                s = self.http.call("POST", url + "/v3/maintenance/status", {}, timeout=1)
            except Exception:
                continue
            if s.get("leader") and s["leader"] == s["header"]["member_id"]:
                return i
        return None

    def put(self, i, key, value, timeout=5.0):
        b64 = lambda s: base64.b64encode(s.encode()).decode()
        self.http.call("POST", self.urls[i] + "/v3/kv/put",
                       {"key": b64(key), "value": b64(value)}, timeout=timeout)

    def lua(self):
        return ETCD_LUA

    def restart(self, i):
        self.procs[i].start()

    def snapshot(self, path):
        leader = self.leader()
        subprocess.run(["etcdctl", "--endpoints", self.urls[leader], "--cacert", self.ca,
                        "snapshot", "save", path], check=True, capture_output=True,
                       env=dict(os.environ, ETCDCTL_API="3"))


class Vaultish:
    """What OpenBao and Coffer share: KV v2 at secret/, a root token."""

    def put(self, i, key, value, timeout=5.0):
        self.http.call("POST", f"{self.urls[i]}/v1/secret/data/{key}", {"data": {"v": value}},
                       timeout=timeout)

    def lua(self):
        return VAULT_LUA.replace("@TOKEN@", self.token)


class OpenBao(Vaultish):
    name = "OpenBao"

    def __init__(self, work, certs):
        self.ca, cert, key = certs
        ports = [(free_port(), free_port()) for _ in range(3)]
        self.urls = [f"https://127.0.0.1:{api}" for api, _ in ports]
        self.procs, self.dirs = [], []
        for i, (api, cluster) in enumerate(ports, 1):
            data = os.path.join(work, f"bao{i}")
            os.makedirs(data)
            config = os.path.join(work, f"bao{i}.hcl")
            with open(config, "w") as f:
                f.write(f'''
storage "raft" {{
  path = "{data}"
  node_id = "b{i}"
  retry_join {{
    leader_api_addr = "{self.urls[0]}"
    leader_ca_cert_file = "{self.ca}"
  }}
}}
listener "tcp" {{
  address = "127.0.0.1:{api}"
  cluster_address = "127.0.0.1:{cluster}"
  tls_cert_file = "{cert}"
  tls_key_file = "{key}"
}}
api_addr = "https://127.0.0.1:{api}"
cluster_addr = "https://127.0.0.1:{cluster}"
disable_mlock = true
log_level = "warn"
# The file audit device is switched on and off between phases through the API.
unsafe_allow_api_audit_creation = true
''')
            self.procs.append(Proc(["bao", "server", "-config", config], data + ".log"))
            self.dirs.append(data)
        plain = Http(self.ca)
        wait_for("OpenBao to listen",
                 lambda: plain.call("GET", self.urls[0] + "/v1/sys/seal-status") is not None)
        init = plain.call("PUT", self.urls[0] + "/v1/sys/init",
                          {"secret_shares": 1, "secret_threshold": 1}, timeout=120)
        self.unseal_key = init["keys_base64"][0]
        self.token = init["root_token"]
        self.http = Http(self.ca, ("X-Vault-Token", self.token))
        for i in range(3):
            self.unseal(i)
            wait_for(f"OpenBao node {i + 1} unsealed",
                     lambda: not plain.call("GET", self.urls[i] + "/v1/sys/seal-status")["sealed"])
        wait_for("OpenBao's active node", lambda: self.leader() is not None)
        self.http.call("POST", self.urls[self.leader()] + "/v1/sys/mounts/secret",
                       {"type": "kv", "options": {"version": "2"}}, timeout=60)
        wait_for("three OpenBao voters", lambda: len(self.http.call(
            "GET", self.urls[self.leader()] + "/v1/sys/storage/raft/configuration")
            ["data"]["config"]["servers"]) == 3)
        self.audit_file = os.path.join(work, "bao-audit.log")

    def unseal(self, i):
        def attempt():
            Http(self.ca).call("PUT", self.urls[i] + "/v1/sys/unseal", {"key": self.unseal_key})
            return True
        wait_for(f"OpenBao node {i + 1} to take its unseal key", attempt)

    def leader(self):
        for i, url in enumerate(self.urls):
            if self.procs[i].p.poll() is not None:
                continue
            try:
                s = Http(self.ca).call("GET", url + "/v1/sys/leader", timeout=1)
            except Exception:
                continue
            if s.get("is_self"):
                return i
        return None

    def set_audit(self, on):
        url = self.urls[self.leader()] + "/v1/sys/audit/file"
        if on:
            self.http.call("PUT", url, {"type": "file", "options": {"file_path": self.audit_file}})
        else:
            self.http.call("DELETE", url)

    def restart(self, i):
        self.procs[i].start()
        self.unseal(i)

    def snapshot(self, path):
        req = urllib.request.Request(self.urls[self.leader()] + "/v1/sys/storage/raft/snapshot",
                                     headers={"X-Vault-Token": self.token})
        with urllib.request.urlopen(req, context=self.http.ctx, timeout=600) as r, \
                open(path, "wb") as f:
            shutil.copyfileobj(r, f)


class Coffer(Vaultish):
    name = "Coffer"

    def __init__(self, work, release):
        release = os.path.abspath(release)
        about_file = os.path.join(work, "coffer.json")
        env = dict(os.environ, COFFER_BIN=os.path.join(release, "coffer"))
        out = open(os.path.join(work, "coffer-cluster.log"), "ab")
        self.former = subprocess.Popen(
            [os.path.join(release, "coffer-cluster-bench"), "--serve", about_file],
            stdin=subprocess.PIPE, stdout=out, stderr=out, env=env)
        # Waits until the file is whole: json.load raises on a half-written one.
        wait_for("Coffer's cluster", lambda: json.load(open(about_file)), timeout=300)
        about = json.load(open(about_file))
        self.ca, self.token, self.bin = about["ca"], about["token"], about["bin"]
        nodes = sorted(about["nodes"], key=lambda n: n["id"])
        self.urls = [n["api"] for n in nodes]
        self.dirs = [n["data_dir"] for n in nodes]
        # The nodes are the former's children; this suite kills and restarts them itself,
        # with the command line and directory they were started with.
        self.procs = [Adopted(n["pid"], os.path.join(work, f"coffer{n['id']}-restarted.log"))
                      for n in nodes]
        self.http = Http(self.ca, ("X-Vault-Token", self.token))

    def leader(self):
        for i, url in enumerate(self.urls):
            if not self.procs[i].alive():
                continue
            try:
                # 200 only on the leader (429 on a follower, 473 read-only, as Vault's codes).
                s = Http(self.ca).call("GET", url + "/v1/sys/health", timeout=1)
            except Exception:
                continue
            if not s.get("standby") and not s.get("read_only"):
                return i
        return None

    def restart(self, i):
        self.procs[i].start()

    def snapshot(self, path):
        subprocess.run([self.bin, "operator", "snapshot", "save", "-o", path], check=True,
                       capture_output=True,
                       env=dict(os.environ, COFFER_ADDR=self.urls[self.leader()],
                                COFFER_CACERT=self.ca, COFFER_TOKEN=self.token))

    def stop(self):
        for p in self.procs:
            p.kill()
        self.former.stdin.close()
        self.former.wait(timeout=60)


class Adopted:
    """A process someone else started, known by its pid; restarted from /proc's record."""

    def __init__(self, pid, logfile):
        self.pid = pid
        self.argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[:-1]
        self.cwd = os.readlink(f"/proc/{pid}/cwd")
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")[:-1]
        self.env = dict(e.split(b"=", 1) for e in env)
        self.logfile = logfile
        self.p = None
        SPAWNED.append(self)

    def alive(self):
        if self.p is not None:
            return self.p.poll() is None
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    def kill(self):
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            wait_for("the process to die", lambda: not self.alive(), timeout=10)

    def start(self):
        out = open(self.logfile, "ab")
        self.p = subprocess.Popen(self.argv, stdout=out, stderr=out, env=self.env, cwd=self.cwd,
                                  start_new_session=True)
        self.pid = self.p.pid


# --- load ----------------------------------------------------------------------------------

LUA_COMMON = r"""
local b64chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
function b64(data)
  return ((data:gsub('.', function(x)
    local r, b = '', x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if #x < 6 then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
    return b64chars:sub(c + 1, c + 1)
  end) .. ({ '', '==', '=' })[#data % 3 + 1])
end
local threads = {}
local counter = 0
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
local mode = os.getenv("BENCH_MODE")
local keys = tonumber(os.getenv("BENCH_KEYS") or "1000")
local offset = tonumber(os.getenv("BENCH_OFFSET") or "0")
local value = string.rep("v", 256)
function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0))
end
function next_key()
  if mode == "fill" then
    counter = counter + 1
    return "fill/" .. (offset + (tid or 0) * 10000000 + counter)
  elseif mode == "write" then
    return "bench/w" .. math.random(1, 100000000)
  else
    return "bench/" .. math.random(0, keys - 1)
  end
end
function response(status, headers, body)
  if status >= 300 then errors_seen = (errors_seen or 0) + 1 end
end
"""

ETCD_LUA = LUA_COMMON + r"""
function request()
  local key = next_key()
  if mode == "read" or mode == "stale" then
    local extra = mode == "stale" and ',"serializable":true' or ''
    return wrk.format("POST", "/v3/kv/range", {["Content-Type"] = "application/json"},
      '{"key":"' .. b64(key) .. '"' .. extra .. '}')
  end
  return wrk.format("POST", "/v3/kv/put", {["Content-Type"] = "application/json"},
    '{"key":"' .. b64(key) .. '","value":"' .. b64(value) .. '"}')
end
"""

VAULT_LUA = LUA_COMMON + r"""
function request()
  local key = next_key()
  local headers = {["X-Vault-Token"] = "@TOKEN@", ["Content-Type"] = "application/json"}
  if mode == "read" then
    return wrk.format("GET", "/v1/secret/data/" .. key, headers)
  elseif mode == "stale" then
    headers["X-Coffer-Consistency"] = "stale"
    return wrk.format("GET", "/v1/secret/data/" .. key, headers)
  end
  return wrk.format("POST", "/v1/secret/data/" .. key, headers,
    '{"data":{"v":"' .. value .. '"}}')
end
"""


def wrk(system, url, mode, clients, seconds, work, offset=0):
    script = os.path.join(work, f"{system.name}.lua")
    with open(script, "w") as f:
        f.write(system.lua())
    threads = 1 if clients == 1 else 2
    env = dict(os.environ, BENCH_MODE=mode, BENCH_KEYS=str(KEYS), BENCH_OFFSET=str(offset))
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{clients}", f"-d{seconds}s", "--latency",
                          "--timeout", "10s", "-s", script, url],
                         capture_output=True, text=True, env=env, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = int(bad.group(1)) if bad else 0
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad += sum(int(x) for x in errs.groups()) if errs else 0

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return float(m.group(1)) * scale

    return {"rate": rate * (total - bad) / total if total else 0.0, "errors": bad,
            "ok": total - bad, "p50": pct(50), "p99": pct(99)}


def prewrite(system):
    leader = system.leader()
    for k in range(KEYS):
        system.put(leader, f"bench/{k}", VALUE)


# Each failover probe write is given this long, then sent again: a write sent during the
# election may be held until a request timeout (etcd's gateway holds it for seconds even
# after a new leader is elected), which would measure that timeout instead of the failover.
PROBE_TIMEOUT = 0.3


def failover(system, rounds):
    """SIGKILL of the leader -> first write acknowledged by a survivor (ms per round), probing
    the survivors in turn with writes of PROBE_TIMEOUT each."""
    times = []
    for r in range(rounds):
        old = system.leader()
        survivors = [i for i in range(3) if i != old]
        killed = time.monotonic()
        system.procs[old].kill()
        done, last_error = None, None
        while done is None and time.monotonic() - killed < 30:
            for i in survivors:
                try:
                    system.put(i, f"failover/{r}", "x", timeout=PROBE_TIMEOUT)
                    done = time.monotonic() - killed
                    break
                except Exception as e:
                    last_error = e
        times.append(done * 1000 if done is not None else float("inf"))
        log(f"{system.name}: failover round {r}: {times[-1]:.0f} ms"
            + ("" if done is not None else f" (last error: {last_error})"))
        system.restart(old)
        wait_for(f"{system.name} node {old + 1} back",
                 lambda: probe_write(system, old), timeout=120)
        wait_for(f"{system.name}'s leader", lambda: system.leader() is not None)
    return times


def probe_write(system, i):
    system.put(i, "probe", "x", timeout=2)
    return True


def fill(system, secrets, work):
    """Writes `secrets` distinct secrets through wrk (64 clients), in 5 s runs."""
    written, offset = 0, 0
    url = system.urls[system.leader()]
    while written < secrets:
        r = wrk(system, url, "fill", 64, 5, work, offset)
        written += r["ok"]
        offset += 1_000_000_000
    return written


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--failover-rounds", type=int, default=20)
    ap.add_argument("--secrets", type=int, default=100_000)
    ap.add_argument("--settle", type=int, default=5,
                    help="seconds between the last secret written and the footprint measured")
    ap.add_argument("--systems", default="etcd,openbao,coffer")
    ap.add_argument("--release-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="coffer-peers-")
    log(f"work directory: {work}")
    certs = make_certs(work)
    wanted = args.systems.split(",")
    results = {}
    started = []
    try:
        for name in wanted:
            if name == "etcd":
                system = Etcd(work, certs)
            elif name == "openbao":
                system = OpenBao(work, certs)
            elif name == "coffer":
                system = Coffer(work, args.release_dir)
            else:
                raise SystemExit(f"unknown system {name}")
            started.append(system)
            log(f"{system.name}: 3 nodes up, leader node {system.leader() + 1}; pre-writing")
            prewrite(system)
            variants = [(system.name, None)]
            if isinstance(system, OpenBao):
                variants = [("OpenBao", False), ("OpenBao + file audit", True)]
            for label, audit in variants:
                if audit is not None:
                    system.set_audit(audit)
                url = system.urls[system.leader()]
                for run in range(args.runs):
                    for mode, clients in [("write", 1), ("write", 64), ("read", 64),
                                          ("stale", 64)]:
                        if mode == "stale" and isinstance(system, OpenBao):
                            continue
                        r = wrk(system, url, mode, clients, args.seconds, work)
                        results.setdefault((label, mode, clients), []).append(r)
                        log(f"{label}: {mode} x{clients} run {run + 1}: {r['rate']:.0f}/s "
                            f"p50 {r['p50']:.2f} ms p99 {r['p99']:.2f} ms errors {r['errors']}")
            if isinstance(system, OpenBao):
                system.set_audit(False)
            if args.failover_rounds:
                results[(system.name, "failover")] = failover(system, args.failover_rounds)
            if args.secrets:
                log(f"{system.name}: writing {args.secrets} secrets")
                written = fill(system, args.secrets, work)
                time.sleep(args.settle)  # let flushes, compactions (and Coffer's archiver) settle
                snap = os.path.join(work, f"{system.name}.snapshot")
                system.snapshot(snap)
                results[(system.name, "footprint")] = {
                    "written": written,
                    "rss": [rss_mb(p.pid) for p in system.procs],
                    "disk": [du_mb(d) for d in system.dirs],
                    "archive": [du_mb(os.path.join(d, "archive")) for d in system.dirs],
                    "snapshot": os.path.getsize(snap) / (1024 * 1024),
                }
                log(f"{system.name}: {results[(system.name, 'footprint')]}")
            stop(system)
            started.remove(system)
    finally:
        for system in started:
            stop(system)
        for p in SPAWNED:
            p.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(results, args)


def stop(system):
    if isinstance(system, Coffer):
        system.stop()
    else:
        for p in system.procs:
            p.kill()


def report(results, args):
    labels = [l for l in ["etcd", "OpenBao", "OpenBao + file audit", "Coffer"]
              if any(k[0] == l for k in results)]
    rows = [("write", 1, "write, 1 client"), ("write", 64, "write, 64 clients"),
            ("read", 64, "linearizable read, 64 clients"), ("stale", 64, "stale read, 64 clients")]
    print(f"\n{args.runs} runs of {args.seconds} s each, wrk -t2 (-t1 -c1 for one client), "
          f"ops/s as min–max (p99 ms of the median run)\n")
    head = "| figure | " + " | ".join(labels) + " | Coffer / etcd | Coffer / OpenBao |"
    print(head)
    print("|" + "---|" * (len(labels) + 3))

    def cell(label, mode, clients):
        rs = results.get((label, mode, clients))
        if not rs:
            return "—", None
        rates = sorted(r["rate"] for r in rs)
        med = sorted(rs, key=lambda r: r["rate"])[len(rs) // 2]
        errors = sum(r["errors"] for r in rs)
        text = f"{rates[0]:,.0f}–{rates[-1]:,.0f} ({med['p99']:.1f})"
        if errors:
            text += f" [{errors} errors]"
        return text, statistics.median(rates)

    for mode, clients, title in rows:
        cells = [cell(l, mode, clients) for l in labels]
        med = dict(zip(labels, (c[1] for c in cells)))
        ratio = lambda a, b: f"{med[a] / med[b]:.2f}" if med.get(a) and med.get(b) else "—"
        print(f"| {title} | " + " | ".join(c[0] for c in cells) +
              f" | {ratio('Coffer', 'etcd')} | {ratio('Coffer', 'OpenBao')} |")
    print()
    for name in ["etcd", "OpenBao", "Coffer"]:
        times = results.get((name, "failover"))
        if times:
            ok = sorted(times)
            print(f"{name}: leader SIGKILL -> first acknowledged write: median "
                  f"{statistics.median(ok):.0f} ms, min {ok[0]:.0f}, max {ok[-1]:.0f} "
                  f"({len(ok)} rounds)")
    for name in ["etcd", "OpenBao", "Coffer"]:
        f = results.get((name, "footprint"))
        if f:
            print(f"{name}: after {f['written']:,} secrets: RSS per node "
                  + ", ".join(f"{x:.0f}" for x in f["rss"]) + " MiB; disk per node "
                  + ", ".join(f"{x:.0f}" for x in f["disk"]) + " MiB"
                  + (" (of which the audit archive " + ", ".join(f"{x:.0f}" for x in f["archive"])
                     + " MiB)" if any(f["archive"]) else "")
                  + f"; snapshot {f['snapshot']:.1f} MiB")


if __name__ == "__main__":
    main()
