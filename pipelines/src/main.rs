use std::process::ExitCode;

fn main() -> ExitCode {
    reclag_pipelines::cli::main_with(std::env::args_os())
}
