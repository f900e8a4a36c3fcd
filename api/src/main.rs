//! The `coffer` binary: server and CLI.

fn main() {
    limit_malloc_arenas();
    std::process::exit(coffer_api::cli::main());
}

/// glibc gives each thread that allocates under contention an arena of its own, up to eight
/// per core, and returns little of them to the system: a server with a Tokio pool, RocksDB's
/// background threads and the spool writer kept far more resident memory than it used.
/// With two arenas the leader's RSS after 200,000 audited reads was 76 MiB instead of 104 MiB
/// (BENCHMARKS.md, "Audit retention"), for about a tenth fewer reads per second in that
/// single run; `MALLOC_ARENA_MAX` in the environment still wins, for a host that prefers
/// the throughput. Called first, before any thread exists.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; no other thread runs yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
