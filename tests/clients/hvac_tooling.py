"""hvac, unchanged, against the Vault routes tools call beyond KV: capabilities, a mount's
configuration and tune, an auth method, autopilot, KV metadata as Vault and OpenBao answer it,
and response wrapping refused rather than ignored. Reads VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT.
"""
import os
import sys

import hvac
import requests
from hvac import exceptions


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


addr, token, ca = os.environ["VAULT_ADDR"], os.environ["VAULT_TOKEN"], os.environ["VAULT_CACERT"]
client = hvac.Client(url=addr, token=token, verify=ca)
kv = client.secrets.kv.v2

# Capabilities: root is `root`; a token with a narrow policy gets exactly what it grants.
caps = client.sys.get_capabilities(paths=["secret/data/app"])
check(caps["capabilities"] == ["root"], f"root's capabilities: {caps}")
client.sys.create_or_update_acl_policy(
    name="reader", policy='path "secret/data/app" { capabilities = ["read", "list"] }')
reader = client.auth.token.create(policies=["reader"])["auth"]["client_token"]
caps = client.sys.get_capabilities(paths=["secret/data/app", "secret/data/other"], token=reader)
check(caps["data"]["secret/data/app"] == ["list", "read"]
      or caps["data"]["secret/data/app"] == ["read", "list"], f"reader on app: {caps}")
check(caps["data"]["secret/data/other"] == ["deny"], f"reader elsewhere: {caps}")
as_reader = hvac.Client(url=addr, token=reader, verify=ca)
own = as_reader.sys.get_capabilities(paths=["secret/data/app"])
check(sorted(own["capabilities"]) == ["list", "read"], f"capabilities-self: {own}")
try:
    as_reader.sys.get_capabilities(paths=["secret/data/app"], token=token)
    check(False, "a reader may not ask about another token")
except exceptions.Forbidden:
    pass

# A mount's configuration and tune.
mount = client.sys.read_mount_configuration(path="secret")
check(mount["data"]["options"]["version"] == "2", f"secret/ tune: {mount}")
client.sys.tune_mount_configuration(path="secret", description="team secrets",
                                    default_lease_ttl="1h", max_lease_ttl="2h")
mount = client.sys.read_mount_configuration(path="secret")
check(mount["data"]["description"] == "team secrets"
      and mount["data"]["default_lease_ttl"] == 3600
      and mount["data"]["max_lease_ttl"] == 7200, f"tuned: {mount}")
try:
    client.sys.tune_mount_configuration(path="secret", options={"version": "1"})
    check(False, "a KV v2 mount cannot be tuned to version 1")
except exceptions.InvalidRequest:
    pass
try:
    client.sys.read_mount_configuration(path="nowhere")
    check(False, "no mount at nowhere/")
except exceptions.InvalidRequest:
    pass
auth_method = client.sys.read_auth_method_tuning(path="userpass")
check(auth_method["data"]["default_lease_ttl"] > 0, f"userpass tune: {auth_method}")

# KV v2 metadata as Vault and OpenBao answer it.
kv.create_or_update_secret(path="app", secret={"a": "1"})
kv.create_or_update_secret(path="app", secret={"a": "2"})
kv.destroy_secret_versions(path="app", versions=[1])
meta = kv.read_secret_metadata(path="app")["data"]
check(meta["oldest_version"] == 0, f"a destroy does not move oldest_version: {meta}")
check(meta["current_metadata_version"] == 0 and meta["metadata_cas_required"] is False,
      f"OpenBao's metadata fields: {meta}")
kv.update_metadata(path="app", max_versions=2)
meta = kv.read_secret_metadata(path="app")["data"]
check(meta["current_metadata_version"] == 1 and meta["oldest_version"] == 1,
      f"max_versions 2 at version 2 prunes nothing yet: {meta}")

# Autopilot: one healthy voter here.
state = client.adapter.get("/v1/sys/storage/raft/autopilot/state")
check(state["data"]["healthy"] is True and state["data"]["failure_tolerance"] == 0,
      f"autopilot: {state}")

# Response wrapping is refused, never answered in the clear.
r = requests.get(f"{addr}/v1/secret/data/app", verify=ca,
                 headers={"X-Vault-Token": token, "X-Vault-Wrap-TTL": "60"})
check(r.status_code == 400 and "wrapping" in r.text and '"a"' not in r.text,
      f"wrap-ttl: {r.status_code} {r.text}")

# The version tools gate features on, and Coffer's own.
seal = client.sys.read_seal_status()
check(seal["version"].startswith("1.") and seal["coffer_version"], f"seal status: {seal}")

print("hvac tooling: all checks passed")
