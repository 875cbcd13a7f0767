//! Subcommands that work on the registry's database and storage directly
//! (`cairn audit …`, `cairn provenance …`, and the operations that run without a server).

pub mod accounts;
pub mod audit;
pub mod healthcheck;
pub mod provenance;
pub mod retention;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar on standard error when it is a terminal; hidden otherwise,
/// so that scripts and CI logs get only the results.
pub(crate) fn progress(total: Option<u64>, what: &str) -> ProgressBar {
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    let template = if total.is_some() {
        "{msg} [{bar:30}] {pos}/{len} ({eta})"
    } else {
        "{msg} {spinner} {pos}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}
