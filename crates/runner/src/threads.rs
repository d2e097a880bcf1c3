//! Thread settings of the binaries (`mtrec`, `mtrec-bench`).

/// Leaves all parallel work to rayon's pool: candle's own elementwise pool
/// gets no worker threads (`CANDLE_NUM_THREADS=1`) unless the environment
/// sets it.
///
/// candle runs its elementwise ops on a "barrier pool" of `threads - 1`
/// workers of its own, which spin 25,000 times after every op before they
/// park; the matmuls, the fused ops and Adam run on rayon's pool. With two
/// cores the two pools' threads take the cores from each other between ops:
/// PLE's training step (many small ops) went from 84-87 to 75-78 ms with the
/// barrier pool off, MMoE and STAR unchanged within noise
/// (`cargo xtask bench profile`). What candle still runs itself (gradient
/// adds, concatenations) is a few percent of a step. Call before any thread
/// exists: the variable is read once, at candle's first parallel op.
pub fn one_compute_pool() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Edition 2021: a safe call; `main` calls this before spawning threads.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
