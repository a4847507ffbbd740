use std::process::ExitCode;

use anyhow::Context;
use kiln::{Manager, RootfsFormat};

use crate::cli::{RootfsArgs, RootfsFormatArg};
use crate::printer::{self, size};

impl From<RootfsFormatArg> for RootfsFormat {
    fn from(format: RootfsFormatArg) -> RootfsFormat {
        match format {
            RootfsFormatArg::Initramfs => RootfsFormat::Initramfs,
            RootfsFormatArg::Ext4 => RootfsFormat::Ext4,
            RootfsFormatArg::Erofs => RootfsFormat::Erofs,
        }
    }
}

pub fn run(manager: &Manager, args: RootfsArgs) -> anyhow::Result<ExitCode> {
    let platform = super::parse_platform(args.platform.as_deref())?;
    let format = RootfsFormat::from(args.format);
    if args.size.is_some() && format != RootfsFormat::Ext4 {
        anyhow::bail!("--size applies to ext4 images only");
    }
    if args.layered {
        return layered(manager, &args, format, platform.as_ref());
    }
    let mut fetched = None;
    if !args.no_referrers {
        // A rootfs another host converted and pushed as a referrer of this
        // image beats converting here; any failure to ask just converts.
        let registry = kiln::PullOptions {
            insecure: args.registry.insecure,
            ca_certs: args.registry.ca_certs.clone(),
            ..kiln::PullOptions::default()
        };
        let reporter = std::sync::Arc::new(crate::progress::Reporter::new(args.json));
        fetched = super::runtime()?.block_on(manager.rootfs_from_referrers(
            &args.reference,
            platform.as_ref(),
            format,
            args.size,
            &registry,
            reporter,
        ))?;
    }
    let from_referrer = fetched.is_some();
    let artifact = match fetched {
        Some(artifact) => artifact,
        None => manager.rootfs(
            &args.reference,
            platform.as_ref(),
            format,
            args.size,
            std::sync::Arc::new(crate::progress::Reporter::new(args.json)),
        )?,
    };
    let path = match &args.output {
        Some(output) => {
            kiln::copy_out(&artifact.path, output)
                .with_context(|| format!("cannot write {}", output.display()))?;
            output.clone()
        }
        None => artifact.path.clone(),
    };
    if args.json {
        let mut value = serde_json::to_value(&artifact)?;
        value["path"] = path.display().to_string().into();
        value["from_referrer"] = from_referrer.into();
        printer::json(&value)?;
    } else {
        let how = if from_referrer {
            "downloaded (a referrer on the image's registry)"
        } else if artifact.cached {
            "from the store"
        } else {
            "built"
        };
        printer::status(format!(
            "{} of {} ({}): {how}",
            format.as_str(),
            artifact.image,
            size(artifact.size)
        ));
        printer::out(path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `--layered`: the metadata image's path, then each layer file's, in the
/// order the VM's mount names them (`device=` options); with `-o DIR`,
/// copies in DIR.
fn layered(
    manager: &Manager,
    args: &RootfsArgs,
    format: RootfsFormat,
    platform: Option<&kiln::Platform>,
) -> anyhow::Result<ExitCode> {
    if format != RootfsFormat::Erofs {
        anyhow::bail!("--layered applies to EROFS only (--format erofs)");
    }
    let reporter = std::sync::Arc::new(crate::progress::Reporter::new(args.json));
    let mut built = manager.rootfs_layered(&args.reference, platform, reporter)?;
    if let Some(output) = &args.output {
        built = kiln::copy_layered_out(&built, output)
            .with_context(|| format!("cannot write {}", output.display()))?;
    }
    if args.json {
        printer::json(&built)?;
        return Ok(ExitCode::SUCCESS);
    }
    print_layered(&built, false)?;
    Ok(ExitCode::SUCCESS)
}

/// A layered EROFS on the terminal: a status line (unless `quiet`), then
/// the metadata image's path and each layer file's, in device order.
pub fn print_layered(built: &kiln::LayeredRootfs, quiet: bool) -> anyhow::Result<()> {
    if !quiet {
        let shared: u64 = built.devices.iter().map(|d| d.size).sum();
        printer::status(format!(
            "layered erofs of {} (metadata {}, {} layer file{} {}): {}",
            built.image,
            size(built.metadata.size),
            built.devices.len(),
            if built.devices.len() == 1 { "" } else { "s" },
            size(shared),
            if built.cached {
                "from the store"
            } else {
                "built"
            }
        ));
    }
    printer::out(built.metadata.path.display())?;
    for device in &built.devices {
        printer::out(device.path.display())?;
    }
    Ok(())
}
