use std::process::ExitCode;

fn main() -> ExitCode {
    reclag_pipelines::alloc::tune();
    // Not locked: `reclag score --output -` writes its Arrow stream to stdout too.
    let mut stdout = std::io::stdout();
    match reclag_pipelines::cli::run(std::env::args_os(), &mut stdout) {
        Ok(code) => code,
        Err(e) => {
            let e = anyhow::Error::from(e);
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
