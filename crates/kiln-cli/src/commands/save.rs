use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
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
        Some(path) => save_to_file(path, |file| {
            Ok(manager.save(&args.references, format, file, reporter)?)
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

/// Writes `path` atomically: a temporary file in the same directory, fsync,
/// rename, fsync of the directory. A failure leaves no file at `path`.
fn save_to_file<T>(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let temp = dir.join(format!(
        ".{}.{}-{nanos}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        // A new file only (never through a symlink someone planted, never
        // truncating another writer's file).
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        let value = write(&mut file)?;
        file.flush()?;
        file.sync_all()
            .with_context(|| format!("cannot write {}", temp.display()))?;
        std::fs::rename(&temp, path)
            .with_context(|| format!("cannot rename {} to {}", temp.display(), path.display()))?;
        std::fs::File::open(&dir).and_then(|d| d.sync_all())?;
        Ok(value)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}
