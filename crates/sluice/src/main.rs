//! The `sluice` binary: see [`sluice::cli_main`].

fn main() -> std::process::ExitCode {
    sluice::cli_main()
}

/// jemalloc instead of glibc's malloc: tokio's 128-byte-aligned task and I/O blocks fit its
/// size classes without memalign slack (see the README's Performance section).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
