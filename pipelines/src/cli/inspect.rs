//! `reclag inspect`: what a model holds.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use crate::error::Result;
use crate::store::Stores;

use super::*;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The model file: a path or URL.
    pub model: String,
}

pub(super) fn run(a: InspectArgs, stores: Arc<Stores>, out: &mut dyn Write) -> Result<ExitCode> {
    let model = crate::store::load_model(&stores, &a.model)?;
    let sum = reclag::format::checksum(&model);
    write!(out, "{}", reclag::inspect::render(&model, &sum)).map_err(io_err)?;
    Ok(ExitCode::SUCCESS)
}
