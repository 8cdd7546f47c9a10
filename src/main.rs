//! The `ringbit` binary: everything happens in [`ringbit::cli`].

fn main() -> std::process::ExitCode {
    ringbit::cli::main()
}
