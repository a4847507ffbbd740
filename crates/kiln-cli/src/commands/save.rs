use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use kiln::{ArchiveFormat, Manager};

use crate::cli::{ArchiveFormatArg, SaveArgs};
use crate::printer::{self, size};
use crate::progress::Reporter;

pub fn run(manager: &Manager, args: SaveArgs) -> anyhow::Result<ExitCode> {
    let format = match args.format {
        ArchiveFormatArg::Docker => ArchiveFormat::Docker,
        ArchiveFormatArg::Oci => ArchiveFormat::Oci,
    };
    let reporter = Arc::new(Reporter::new(args.quiet));
    let report = match &args.output {
        // A failed save leaves no file (and no temporary file) behind.
        Some(path) => kiln::write_atomic_with(path, 0o644, |file| {
            anyhow::Ok(manager.save(&args.references, format, file, reporter)?)
        })
        .map_err(|error| {
            // The save's own errors say what failed; errors writing the
            // file get its path.
            let own = error
                .downcast_ref::<kiln::Error>()
                .is_some_and(|e| !matches!(e, kiln::Error::ArchiveOutput(_)));
            if own {
                error
            } else {
                error.context(format!("cannot write {}", path.display()))
            }
        })?,
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                return Err(kiln::Error::TerminalArchive {
                    stream: "stdout",
                    action: "write",
                }
                .into());
            }
            manager.save(&args.references, format, stdout.lock(), reporter)?
        }
    };
    if !args.quiet {
        let target = match &args.output {
            Some(path) => path.display().to_string(),
            None => "stdout".into(),
        };
        printer::status(format!(
            "saved {} image{} ({} blobs, {}) to {target}",
            report.images.len(),
            if report.images.len() == 1 { "" } else { "s" },
            report.blobs,
            size(report.bytes)
        ));
    }
    Ok(ExitCode::SUCCESS)
}
