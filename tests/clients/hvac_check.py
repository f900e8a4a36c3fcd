"""hvac, unchanged, against Coffer. Exits non-zero with the failing check on any mismatch.

Reads VAULT_ADDR, VAULT_TOKEN and VAULT_CACERT like any Vault client; EXPECT_HEALTH is the
status `sys/health` should answer (200 on a leader, 429 on a follower, as Vault's standbys).
"""
import os
import sys

import hvac
from hvac import exceptions


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


client = hvac.Client(
    url=os.environ["VAULT_ADDR"],
    token=os.environ["VAULT_TOKEN"],
    verify=os.environ["VAULT_CACERT"],
)
kv = client.secrets.kv.v2

head = client.sys.read_health_status()  # HEAD, hvac's default
expected = int(os.environ.get("EXPECT_HEALTH", "200"))
check(head.status_code == expected, f"HEAD health: {head.status_code}, expected {expected}")
check(client.sys.is_initialized() and not client.sys.is_sealed(), "is_initialized / is_sealed")
health = client.sys.read_health_status(method="GET")
if not isinstance(health, dict):  # hvac hands back the raw response for a non-200 status
    check(health.status_code == expected, f"GET health: {health.status_code}")
    health = health.json()
check(health["initialized"] and not health["sealed"], f"health: {health}")
seal = client.sys.read_seal_status()
check(seal["sealed"] is False and seal["t"] == 1, f"seal status: {seal}")
check(client.is_authenticated(), "token is valid")

w1 = kv.create_or_update_secret(path="hvac/app", secret={"password": "one"})
check(w1["data"]["version"] == 1, f"first write: {w1}")
w2 = kv.create_or_update_secret(path="hvac/app", secret={"password": "two"}, cas=1)
check(w2["data"]["version"] == 2, f"cas write: {w2}")
try:
    kv.create_or_update_secret(path="hvac/app", secret={"password": "x"}, cas=1)
    check(False, "a stale cas must fail")
except exceptions.InvalidRequest:
    pass

read = kv.read_secret_version(path="hvac/app", raise_on_deleted_version=True)
check(read["data"]["data"] == {"password": "two"}, f"read latest: {read}")
old = kv.read_secret_version(path="hvac/app", version=1, raise_on_deleted_version=True)
check(old["data"]["data"] == {"password": "one"}, f"read v1: {old}")

kv.create_or_update_secret(path="hvac/other", secret={"k": "v"})
keys = kv.list_secrets(path="hvac")["data"]["keys"]
check(keys == ["app", "other"], f"list: {keys}")

kv.delete_latest_version_of_secret(path="hvac/app")
try:
    kv.read_secret_version(path="hvac/app", raise_on_deleted_version=True)
    check(False, "reading a deleted version must raise")
except exceptions.InvalidPath:
    pass
deleted = kv.read_secret_version(path="hvac/app", raise_on_deleted_version=False)
check(deleted["data"]["data"] is None and deleted["data"]["metadata"]["deletion_time"], f"deleted: {deleted}")

kv.undelete_secret_versions(path="hvac/app", versions=[2])
check(kv.read_secret_version(path="hvac/app", raise_on_deleted_version=True)["data"]["data"]["password"] == "two", "undelete")

kv.destroy_secret_versions(path="hvac/app", versions=[1])
meta = kv.read_secret_metadata(path="hvac/app")["data"]
check(meta["current_version"] == 2, f"metadata: {meta}")
check(meta["versions"]["1"]["destroyed"] is True, f"destroyed v1: {meta}")
check(meta["versions"]["2"]["deletion_time"] == "", f"undeleted v2: {meta}")

try:
    kv.read_secret_version(path="hvac/absent", raise_on_deleted_version=True)
    check(False, "missing secret must raise")
except exceptions.InvalidPath:
    pass

bad = hvac.Client(url=os.environ["VAULT_ADDR"], token="hvs.not-valid", verify=os.environ["VAULT_CACERT"])
try:
    bad.secrets.kv.v2.read_secret_version(path="hvac/app", raise_on_deleted_version=True)
    check(False, "a bad token must be refused")
except exceptions.Forbidden:
    pass

# Backups: hvac's take_raft_snapshot streams a Coffer backup file, checked end to end by
# the CLI's keyless inspect.
snap = client.sys.take_raft_snapshot()
check(snap.status_code == 200, f"take_raft_snapshot: {snap.status_code}")
body = snap.content
check(body.startswith(b"COFFERBAK1\n"), "a Coffer backup file")
check(int(snap.headers["Content-Length"]) == len(body), "Content-Length matches the body")
try:
    bad.sys.take_raft_snapshot().raise_for_status()
    check(False, "a backup without sudo must be refused")
except Exception:
    pass
if os.environ.get("SNAPSHOT_OUT"):
    with open(os.environ["SNAPSHOT_OUT"], "wb") as f:
        f.write(body)

# Restores into the running cluster: restore_raft_snapshot rolls a change made after the
# backup back; force_restore_raft_snapshot takes the same file; neither without sudo.
kv.create_or_update_secret(path="hvac/after-backup", secret={"k": "v"})
client.sys.restore_raft_snapshot(body)
keys = kv.list_secrets(path="hvac")["data"]["keys"]
check(keys == ["app", "other"], f"after restore_raft_snapshot: {keys}")
kv.create_or_update_secret(path="hvac/after-backup", secret={"k": "v"})
client.sys.force_restore_raft_snapshot(body)
keys = kv.list_secrets(path="hvac")["data"]["keys"]
check(keys == ["app", "other"], f"after force_restore_raft_snapshot: {keys}")
try:
    bad.sys.restore_raft_snapshot(body)
    check(False, "a restore without a valid token must be refused")
except exceptions.Forbidden:
    pass
try:
    client.sys.restore_raft_snapshot(b"not a snapshot")
    check(False, "a file that is not a snapshot must be refused")
except exceptions.InvalidRequest:
    pass
check(kv.read_secret_version(path="hvac/other", raise_on_deleted_version=True)["data"]["data"] == {"k": "v"}, "data intact after the refusals")

print("hvac: all checks passed")
