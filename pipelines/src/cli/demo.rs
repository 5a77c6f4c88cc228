//! `reclag demo`: train, score and evaluate on the bundled sample.

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Working directory for the sample, the model and the scored output
    /// (default: a fresh temporary directory, removed afterwards).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}
