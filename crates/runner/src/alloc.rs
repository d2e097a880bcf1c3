//! Allocator settings of the binaries (`mtrec`, `mtrec-bench`), which use
//! mimalloc as their global allocator.

/// mimalloc's `mi_option_purge_delay` (index in `mi_option_e`, mimalloc v3's
/// `mimalloc.h`, the version libmimalloc-sys 0.1.49 builds).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped instead of returning it to the OS.
///
/// A training step allocates and frees the same large buffers every step
/// (activations, gradients: several MB each). mimalloc returns freed memory
/// to the OS after 10 ms by default, so every step faulted the pages in again
/// and the kernel zeroed them: ~8,000 page faults per 20 steps of the
/// benchmark's MMoE and 4-6% of the CPU time in `clear_page_erms`, against
/// ~300 faults with purging off (`cargo xtask bench profile`, `/usr/bin/time`).
/// The cost is that the process keeps its peak memory until it exits, as
/// PyTorch's caching allocator does. Setting `MIMALLOC_PURGE_DELAY` in the
/// environment overrides this (the variable is read before `main`).
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    set_purge_delay(-1);
}

#[allow(unsafe_code)]
fn set_purge_delay(ms: std::os::raw::c_long) {
    // SAFETY: `mi_option_set` takes two integers, touches only mimalloc's
    // option table (atomics) and is documented as callable at any time; the
    // option index is checked against the header of the bundled version.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms) }
}
