//! The sluice program, built inside the test crate so integration tests can run the real
//! binary through `CARGO_BIN_EXE_sluice-e2e`.

fn main() -> std::process::ExitCode {
    sluice::cli_main()
}
