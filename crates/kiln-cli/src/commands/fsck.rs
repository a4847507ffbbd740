use std::process::ExitCode;

use kiln::Manager;

use crate::cli::{Format, FsckArgs};
use crate::printer::{self, size};

pub fn run(manager: &Manager, args: FsckArgs) -> anyhow::Result<ExitCode> {
    let verbose = !args.quiet && args.format != Format::Json && printer::stderr_is_terminal();
    let mut observe = |digest: &kiln::Digest, bytes: u64| {
        if verbose {
            eprint!("\rchecking {} ({})        ", digest.short(), size(bytes));
        }
    };
    let report = manager.fsck(args.repair, &mut observe)?;
    if verbose {
        eprint!("\r{}\r", " ".repeat(50));
    }
    if args.format == Format::Json {
        printer::json(&report)?;
    } else {
        for problem in &report.problems {
            let repaired = problem
                .repaired
                .as_ref()
                .map(|r| format!(" (repaired: {r})"))
                .unwrap_or_default();
            printer::out(format!(
                "{}: {}: {}{repaired}",
                problem.kind, problem.digest, problem.detail
            ))?;
        }
        if !args.quiet {
            printer::status(format!(
                "checked {} blobs ({}), {} images and {} disks: {} problem(s)",
                report.blobs_checked,
                size(report.bytes_checked),
                report.images_checked,
                report.disks_checked,
                report.problems.len()
            ));
        }
    }
    if report.problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        if args.format != Format::Json {
            printer::status(if args.repair {
                "hint: pull the images marked incomplete again"
            } else {
                "hint: `kiln fsck --repair` quarantines corrupt blobs so the next pull fetches them again"
            });
        }
        Ok(ExitCode::from(1))
    }
}
