//! The `sluice-tools` binary: see [`sluice_tools::cli_main`].

fn main() -> std::process::ExitCode {
    sluice_tools::cli_main()
}
