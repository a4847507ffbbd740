use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use kiln::{Manager, PullOptions, PushOptions, RootfsFormat};

use crate::cli::{Format, PushArgs, RootfsFormatArg};
use crate::printer::{self, size};
use crate::progress::Reporter;

pub fn run(manager: &Manager, args: PushArgs) -> anyhow::Result<ExitCode> {
    let options = PushOptions {
        platform: super::parse_platform(args.platform.as_deref())?,
        registry: PullOptions {
            insecure: args.registry.insecure,
            ca_certs: args.registry.ca_certs,
            credentials: super::login::call_credentials(
                args.destination.as_deref().unwrap_or(&args.image),
                args.creds.as_deref(),
            )?,
            concurrency: args.concurrency.into(),
            ..PullOptions::default()
        },
        chunk_size: args.chunk_size,
        rootfs: args.rootfs.map(|format| match format {
            RootfsFormatArg::Initramfs => RootfsFormat::Initramfs,
            RootfsFormatArg::Ext4 => RootfsFormat::Ext4,
            RootfsFormatArg::Erofs => RootfsFormat::Erofs,
        }),
        rootfs_size: args.rootfs_size,
    };
    if options.rootfs_size.is_some() && options.rootfs != Some(RootfsFormat::Ext4) {
        anyhow::bail!("--rootfs-size applies to --rootfs ext4 only");
    }
    let reporter = Arc::new(Reporter::new(args.quiet || args.format == Format::Json));
    let started = Instant::now();
    let pushed = super::runtime()?.block_on(manager.push(
        &args.image,
        args.destination.as_deref(),
        &options,
        reporter,
    ))?;
    if args.format == Format::Json {
        printer::json(&pushed)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !args.quiet {
        printer::status(format!(
            "pushed {}: {} blobs uploaded ({}), {} mounted, {} already there, in {:.1}s",
            pushed.reference,
            pushed.uploaded,
            size(pushed.bytes_uploaded),
            pushed.mounted,
            pushed.existing,
            started.elapsed().as_secs_f64()
        ));
        if let Some(referrer) = &pushed.referrer {
            printer::status(format!(
                "rootfs {} ({}) published as referrer {}{}",
                referrer.rootfs,
                size(referrer.size),
                referrer.digest,
                if referrer.tag_schema {
                    " (referrers tag schema)"
                } else {
                    ""
                }
            ));
        }
    }
    printer::out(&pushed.manifest_digest)?;
    Ok(ExitCode::SUCCESS)
}
