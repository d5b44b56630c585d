//! The `dispatchbox` binary: the library's command line with the built-in targets only.

fn main() -> std::process::ExitCode {
    dispatchbox::main_with(dispatchbox::Router::new())
}
