//! Keeping the agent's resident memory small on a gateway (see the memory
//! section of `docs/benchmarks.md` for where the bytes go).
//!
//! glibc's malloc is tuned at start-up and asked, now and then, to hand freed
//! pages back to the kernel. Elsewhere (musl, other allocators) both are no-ops.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often freed heap pages are returned to the kernel.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// glibc malloc settings; call before any thread starts.
///
/// By default glibc gives each thread its own arena (up to 8 × cores) and
/// raises its mmap threshold after the first large free, which moves sled's
/// 512 KiB IO buffers into those arenas: freed memory then stays resident as
/// fragmentation (91 → 73 MiB at 10,000 tags/s from the arenas alone). One
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

/// Return free pages inside the heap to the kernel (glibc only trims the top
/// of the heap by itself, so a long-lived chunk near the top pins everything
/// freed below it).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe; it takes the arena lock.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Calls [`trim`] every `interval` until `stop` fires.
pub async fn run_trimmer(interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let started = std::time::Instant::now();
                trim();
                tracing::trace!(took_us = started.elapsed().as_micros() as u64, "malloc_trim");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trimmer_trims_until_stopped() {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_trimmer(Duration::from_millis(5), stop.clone()));
        // Let it run a few rounds with garbage to give back.
        for _ in 0..20 {
            drop(vec![1u8; 256 * 1024].into_boxed_slice());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(!task.is_finished(), "the trimmer runs until told to stop");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the trimmer stops promptly once cancelled")
            .expect("the trimmer does not panic");
    }
}
