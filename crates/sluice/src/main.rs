//! The `sluice` binary: see [`sluice::cli_main`].

fn main() -> std::process::ExitCode {
    sluice::cli_main()
}
