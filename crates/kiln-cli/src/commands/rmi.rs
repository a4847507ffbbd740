use std::process::ExitCode;

use kiln::Manager;

use crate::cli::{Format, RmiArgs};
use crate::printer::{self, size};

pub fn run(manager: &Manager, args: RmiArgs) -> anyhow::Result<ExitCode> {
    let platform = super::parse_platform(args.platform.as_deref())?;
    let report = manager.remove(&args.references, platform.as_ref(), args.force)?;
    if args.format == Format::Json {
        printer::json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    for name in &report.untagged {
        printer::out(format!("Untagged: {name}"))?;
    }
    for digest in &report.deleted {
        printer::out(format!("Deleted: {digest}"))?;
    }
    for digest in &report.kept_for_holders {
        printer::status(format!("kept {digest}: a sandbox disk still uses it"));
    }
    if report.blobs_removed > 0 {
        printer::status(format!(
            "freed {} in {} blobs",
            size(report.bytes_freed),
            report.blobs_removed
        ));
    }
    Ok(ExitCode::SUCCESS)
}
