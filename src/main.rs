//! The meshroot binary: everything is in the library (`meshroot::cmd`), so
//! tests can parse and run each command as this does.

fn main() -> std::process::ExitCode {
    meshroot::cmd::main()
}
