use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::bail;
use kiln::Manager;

use crate::cli::{Format, PruneArgs};
use crate::printer::{self, size};

pub fn run(manager: &Manager, args: PruneArgs) -> anyhow::Result<ExitCode> {
    if !args.dry_run && !args.yes {
        let what = if args.all {
            "every image no sandbox uses"
        } else {
            "images without a name"
        };
        if !std::io::stdin().is_terminal() {
            bail!(
                "prune removes {what}, unreferenced blobs and abandoned downloads; pass --yes to confirm (or --dry-run to see what would go)"
            );
        }
        eprint!(
            "This removes {what}, unreferenced blobs and downloads abandoned for a day. Continue? [y/N] "
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            printer::status("nothing removed");
            return Ok(ExitCode::SUCCESS);
        }
    }
    let report = manager.prune(args.all, args.dry_run)?;
    if args.format == Format::Json {
        let mut value = serde_json::to_value(&report)?;
        value["bytes_reclaimed"] = report.bytes_reclaimed().into();
        value["dry_run"] = args.dry_run.into();
        printer::json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if args.dry_run {
        "Would delete"
    } else {
        "Deleted"
    };
    for digest in &report.images_removed {
        printer::out(format!("{verb}: {digest}"))?;
    }
    if report.orphans_removed > 0 {
        printer::out(format!(
            "{verb}: {} disk directories a killed disk create left",
            report.orphans_removed
        ))?;
    }
    if report.artifacts_removed > 0 {
        printer::out(format!(
            "{verb}: {} root filesystems an older kiln converted",
            report.artifacts_removed
        ))?;
    }
    printer::out(format!(
        "{} {} images, {} blobs, {} abandoned downloads; {} space: {}",
        if args.dry_run {
            "Would remove"
        } else {
            "Removed"
        },
        report.images_removed.len(),
        report.blobs_removed,
        report.ingests_removed,
        if args.dry_run {
            "reclaimable"
        } else {
            "reclaimed"
        },
        size(report.bytes_reclaimed())
    ))?;
    Ok(ExitCode::SUCCESS)
}
