"""hvac, unchanged, for users, policies and tokens against Coffer.

Reads VAULT_ADDR, VAULT_TOKEN (root) and VAULT_CACERT. Exits non-zero on the first mismatch.
"""
import os
import sys

import hvac
from hvac import exceptions

ADDR, CA = os.environ["VAULT_ADDR"], os.environ["VAULT_CACERT"]


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def refused(fn, exc=exceptions.Forbidden):
    try:
        fn()
    except exc:
        return True
    return False


root = hvac.Client(url=ADDR, token=os.environ["VAULT_TOKEN"], verify=CA)

READER = """
path "secret/data/team/*" { capabilities = ["read"] }
path "secret/metadata/team/*" { capabilities = ["list", "read"] }
"""
root.sys.create_or_update_acl_policy(name="team-reader", policy=READER)
check(root.sys.read_acl_policy(name="team-reader")["data"]["policy"] == READER, "read policy back")
check("team-reader" in root.sys.list_acl_policies()["data"]["keys"], "list policies")
root.sys.create_or_update_acl_policy(name="scratch", policy='path "x" { capabilities = ["read"] }')
root.sys.delete_acl_policy(name="scratch")
check("scratch" not in root.sys.list_acl_policies()["data"]["keys"], "policy deleted")
check(refused(lambda: root.sys.create_or_update_acl_policy(name="bad", policy='path "x" { capabilities = ["fly"] }'),
              exceptions.InvalidRequest), "a bad policy is refused")

root.secrets.kv.v2.create_or_update_secret(path="team/db", secret={"password": "p"})
root.secrets.kv.v2.create_or_update_secret(path="other/db", secret={"password": "q"})

root.auth.userpass.create_or_update_user(username="alice", password="correct horse", policies=["team-reader"])
check(refused(lambda: hvac.Client(url=ADDR, verify=CA).auth.userpass.login(username="alice", password="wrong"),
              exceptions.InvalidRequest), "wrong password refused")

alice = hvac.Client(url=ADDR, verify=CA)
login = alice.auth.userpass.login(username="alice", password="correct horse")
check(sorted(login["auth"]["policies"]) == ["default", "team-reader"], f"login policies: {login['auth']}")
check(login["auth"]["renewable"] and login["auth"]["lease_duration"] > 0, "login lease")
check(alice.is_authenticated(), "alice's token works")

kv = alice.secrets.kv.v2
check(kv.read_secret_version(path="team/db", raise_on_deleted_version=True)["data"]["data"]["password"] == "p", "alice reads team/")
check(refused(lambda: kv.read_secret_version(path="other/db", raise_on_deleted_version=True)), "alice refused outside team/")
check(refused(lambda: kv.create_or_update_secret(path="team/db", secret={"x": "y"})), "alice refused writes")
check(refused(lambda: alice.sys.read_acl_policy(name="team-reader")), "alice refused sys")

me = alice.auth.token.lookup_self()["data"]
check(me["display_name"] == "userpass-alice" and me["meta"]["username"] == "alice", f"lookup_self: {me}")
renewed = alice.auth.token.renew_self(increment="1h")
check(alice.auth.token.lookup_self()["data"]["ttl"] <= 3600, f"renew_self sets the TTL to the increment: {renewed}")

child = root.auth.token.create(policies=["team-reader"], ttl="10m")
child_token = child["auth"]["client_token"]
c = hvac.Client(url=ADDR, token=child_token, verify=CA)
check(c.auth.token.lookup_self()["data"]["ttl"] <= 600, "child ttl")
c.auth.token.revoke_self()
check(not c.is_authenticated(), "revoked token no longer works")

alice.logout(revoke_token=True)
check(not hvac.Client(url=ADDR, token=login["auth"]["client_token"], verify=CA).is_authenticated(), "logout revokes")

print("hvac identity: all checks passed")
