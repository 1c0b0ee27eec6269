//! Keeping the agent's resident memory small on a gateway (see the memory
//! section of `docs/benchmarks.md` for where the bytes go).
//!
//! glibc's malloc is tuned at start-up; elsewhere (musl) this is a no-op.
//! Measured and not kept: a periodic `malloc_trim(0)` (no difference: the heap
//! holds few free pages once arenas are limited) and mimalloc (49–117 MiB
//! against 25 MiB here, even with `MIMALLOC_PURGE_DELAY=0`).

/// glibc malloc settings; call before any thread starts.
///
/// By default glibc gives each thread its own arena (up to 8 × cores) and
/// raises its mmap threshold after the first large free, which moves sled's
/// 512 KiB IO buffers into those arenas: freed memory then stays resident as
/// fragmentation (≈ 100 → 73 MiB at 10,000 tags/s from the arenas alone). One
/// arena and a fixed 128 KiB threshold keep RSS close to the live heap.
/// `MALLOC_ARENA_MAX` / `MALLOC_MMAP_THRESHOLD_` in the environment win, so
/// alternatives can be measured without a rebuild.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only changes allocator parameters.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: as above.
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
        }
    }
}
