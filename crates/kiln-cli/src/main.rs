//! The `kiln` command line: arguments in `cli`, one file per command in
//! `commands/`, output in `printer` and `progress`.

mod cli;
mod commands;
mod printer;
mod progress;

use std::process::ExitCode;

use clap::Parser;

use crate::printer::BrokenPipe;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { 1 } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    match commands::run(cli) {
        Ok(code) => code,
        Err(error) if error.is::<BrokenPipe>() => ExitCode::SUCCESS,
        Err(error) => report(&error),
    }
}

/// Prints `error:` / `caused by:` / `hint:` and picks the exit code: 1 for
/// what the user can fix, 2 for the unexpected.
pub(crate) fn report(error: &anyhow::Error) -> ExitCode {
    let kiln_error = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<kiln::Error>());
    let mut lines = vec![format!("error: {error}")];
    let mut seen = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !seen.contains(&text) {
            lines.push(format!("caused by: {text}"));
            seen.push_str(&text);
        }
    }
    if let Some(hint) = kiln_error.and_then(kiln::Error::hint) {
        lines.push(format!("hint: {hint}"));
    }
    for line in lines {
        printer::status(line);
    }
    let unexpected = kiln_error.is_some_and(|e| !e.kind().is_user_error());
    ExitCode::from(if unexpected { 2 } else { 1 })
}
