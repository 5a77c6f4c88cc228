//! Progress bars on a terminal, silence elsewhere (CI logs, pipes, cron mail).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar drawn on stderr only when stderr is a terminal.
pub fn bar(total: u64, unit: &str, message: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), draw_target());
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{msg:>10}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} ({{elapsed}}, eta {{eta}})"
        ))
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_message(message.to_string());
    pb
}

fn draw_target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// Adapts the core trainer's progress callbacks to a bar.
pub struct TrainBar(pub ProgressBar);

impl reclag::Progress for TrainBar {
    fn start(&self, total_epochs: u64) {
        self.0.set_length(total_epochs);
        self.0.set_position(0);
    }
    fn advance(&self, epochs: u64) {
        self.0.inc(epochs);
    }
}
