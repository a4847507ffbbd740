use std::process::ExitCode;

use anyhow::Context;
use kiln::{Manager, RootfsFormat};

use crate::cli::{RootfsArgs, RootfsFormatArg};
use crate::printer::{self, size};

pub fn run(manager: &Manager, args: RootfsArgs) -> anyhow::Result<ExitCode> {
    let platform = super::parse_platform(args.platform.as_deref())?;
    let format = match args.format {
        RootfsFormatArg::Initramfs => RootfsFormat::Initramfs,
        RootfsFormatArg::Ext4 => RootfsFormat::Ext4,
        RootfsFormatArg::Erofs => RootfsFormat::Erofs,
    };
    if args.size.is_some() && format != RootfsFormat::Ext4 {
        anyhow::bail!("--size applies to ext4 images only");
    }
    let artifact = manager.rootfs(&args.reference, platform.as_ref(), format, args.size)?;
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
        printer::json(&value)?;
    } else {
        let how = if artifact.cached {
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
