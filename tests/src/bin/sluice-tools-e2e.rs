//! The sluice-tools program (`demo`, `check`), built inside the test crate so integration
//! tests can run the real binary through `CARGO_BIN_EXE_sluice-tools-e2e`.

fn main() -> std::process::ExitCode {
    sluice_tools::cli_main()
}
