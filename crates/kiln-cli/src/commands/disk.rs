use std::process::ExitCode;

use kiln::{Disk, DiskFormat, Manager};

use crate::cli::{DiskCommand, DiskFormatArg, Format};
use crate::printer::{self, ago, size};

pub fn run(manager: &Manager, command: DiskCommand) -> anyhow::Result<ExitCode> {
    match command {
        DiskCommand::Create(args) => {
            let platform = super::parse_platform(args.platform.as_deref())?;
            let format = match args.format {
                DiskFormatArg::Auto => DiskFormat::Auto,
                DiskFormatArg::Raw => DiskFormat::Raw,
                DiskFormatArg::Qcow2 => DiskFormat::Qcow2,
            };
            let disk = manager.create_disk(
                &args.name,
                &args.image,
                platform.as_ref(),
                format,
                args.size,
                std::sync::Arc::new(crate::progress::Reporter::new(args.json)),
            )?;
            if args.json {
                printer::json(&disk)?;
            } else {
                printer::status(format!(
                    "disk {} ({}, {}, {}) from {}",
                    disk.name,
                    disk.format,
                    disk.method,
                    size(disk.size),
                    disk.image
                ));
                if let Some(kernel) = &disk.kernel {
                    printer::status(format!("kernel: {}", kernel.display()));
                }
                if disk.method == "overlay" && args.format == DiskFormatArg::Auto {
                    printer::status(
                        "note: a qcow2 overlay, as the store's filesystem has no reflink: QEMU \
                         opens it; for Firecracker, which opens raw disks only, pass --format raw",
                    );
                }
                printer::out(disk.path.display())?;
            }
        }
        DiskCommand::Ls(args) => {
            let disks = manager.disks()?;
            if args.format == Format::Json {
                printer::json(&disks)?;
            } else if args.quiet {
                for disk in &disks {
                    printer::out(&disk.name)?;
                }
            } else {
                let rows: Vec<Vec<String>> = disks.iter().map(row).collect();
                printer::table(
                    &[
                        "NAME",
                        "IMAGE",
                        "FORMAT",
                        "SIZE",
                        "ALLOCATED",
                        "CREATED",
                        "PATH",
                    ],
                    &rows,
                )?;
            }
        }
        DiskCommand::Path { name } => printer::out(manager.disk(&name)?.path.display())?,
        DiskCommand::Rm { names } => {
            // As `docker rm`: a disk that cannot go does not keep the
            // others; each failure is reported, and the exit says so.
            let mut failed = None;
            for name in names {
                match manager.remove_disk(&name) {
                    Ok(()) => printer::out(format!("Removed: {name}"))?,
                    Err(error) => failed = Some(crate::report(&error.into())),
                }
            }
            if let Some(code) = failed {
                return Ok(code);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn row(disk: &Disk) -> Vec<String> {
    vec![
        disk.name.clone(),
        disk.references
            .first()
            .cloned()
            .unwrap_or_else(|| disk.image.short().to_string()),
        format!("{} ({})", disk.format, disk.method),
        size(disk.size),
        size(disk.allocated),
        ago(disk.created_at),
        disk.path.display().to_string(),
    ]
}

pub fn snapshot(
    manager: &Manager,
    disk: &str,
    reference: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let reporter = std::sync::Arc::new(crate::progress::Reporter::new(json));
    let snapshot = manager.snapshot(disk, reference, reporter)?;
    if json {
        printer::json(&snapshot)?;
    } else {
        printer::status(format!(
            "snapshot of {disk}: {} ({} changed, {} removed, layer {})",
            snapshot.reference,
            snapshot.changed,
            snapshot.removed,
            snapshot.layer.short()
        ));
        printer::out(&snapshot.manifest_digest)?;
    }
    Ok(ExitCode::SUCCESS)
}
