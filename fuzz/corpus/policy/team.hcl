# team
path "secret/data/team/*" { capabilities = ["read", "list"] }
path "secret/data/+/config" { capabilities = ["create", "update"] }
path "secret/data/team/admin" { capabilities = ["deny"] }
/* legacy */ path "sys/*" { policy = "sudo" }
secret/data/team/admin