use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use kiln::{Manager, PullOptions, PullPolicy, RootfsFormat};

use crate::cli::{Format, Policy, PullArgs};
use crate::printer::{self, size};
use crate::progress::Reporter;

pub fn run(manager: &Manager, args: PullArgs) -> anyhow::Result<ExitCode> {
    let mut formats: Vec<(RootfsFormat, Option<u64>)> = Vec::new();
    for format in args.rootfs.iter().copied().map(RootfsFormat::from) {
        if !formats.iter().any(|(f, _)| *f == format) {
            let size = args.rootfs_size.filter(|_| format == RootfsFormat::Ext4);
            formats.push((format, size));
        }
    }
    if args.rootfs_size.is_some() && !formats.iter().any(|(f, _)| *f == RootfsFormat::Ext4) {
        anyhow::bail!("--rootfs-size applies to --rootfs ext4 only");
    }
    let options = PullOptions {
        platform: super::parse_platform(args.platform.as_deref())?,
        policy: match args.policy {
            Policy::Always => PullPolicy::Always,
            Policy::Missing => PullPolicy::Missing,
            Policy::Never => PullPolicy::Never,
        },
        force: args.force,
        insecure: args.registry.insecure,
        ca_certs: args.registry.ca_certs,
        concurrency: args.concurrency.into(),
        credentials: super::login::call_credentials(&args.reference, args.creds.as_deref())?,
        pipelined_diff_id: !args.inline_diff_id,
    };
    let reporter = Arc::new(Reporter::new(args.quiet || args.format == Format::Json));
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.layered {
        if formats != [(RootfsFormat::Erofs, None)] {
            anyhow::bail!("--layered goes with --rootfs erofs alone");
        }
        let (pulled, layered) =
            runtime.block_on(manager.pull_rootfs_layered(&args.reference, &options, reporter))?;
        if args.format == Format::Json {
            let mut value = serde_json::to_value(&pulled)?;
            value["layered"] = serde_json::to_value(&layered)?;
            printer::json(&value)?;
            return Ok(ExitCode::SUCCESS);
        }
        if !args.quiet {
            printer::status(format!("pulled {} ({})", pulled.reference, pulled.platform));
        }
        printer::out(&pulled.manifest_digest)?;
        super::rootfs::print_layered(&layered, args.quiet)?;
        return Ok(ExitCode::SUCCESS);
    }
    let (pulled, artifacts) =
        runtime.block_on(manager.pull_rootfs(&args.reference, &options, &formats, reporter))?;
    if args.format == Format::Json {
        let mut value = serde_json::to_value(&pulled)?;
        if !formats.is_empty() {
            value["rootfs"] = serde_json::to_value(&artifacts)?;
        }
        printer::json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !args.quiet {
        let how = if pulled.cached {
            "already in the store".to_string()
        } else {
            format!(
                "downloaded {} in {:.1}s",
                size(pulled.bytes_downloaded),
                started.elapsed().as_secs_f64()
            )
        };
        printer::status(format!(
            "pulled {} ({}): {how}",
            pulled.reference, pulled.platform
        ));
    }
    printer::out(&pulled.manifest_digest)?;
    for artifact in &artifacts {
        if !args.quiet {
            printer::status(format!(
                "{} of {} ({}): {}",
                artifact.format.as_str(),
                artifact.image,
                size(artifact.size),
                if artifact.cached {
                    "from the store"
                } else if artifact.unpacked_while_pulling {
                    "built while pulling"
                } else {
                    "built from the stored layers"
                }
            ));
        }
        printer::out(artifact.path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}
