use std::process::ExitCode;

use kiln::{ImageDetails, Manager};

use crate::cli::{Format, InspectArgs};
use crate::printer::{self, size};

pub fn run(manager: &Manager, args: InspectArgs) -> anyhow::Result<ExitCode> {
    let platform = super::parse_platform(args.platform.as_deref())?;
    let details = manager.inspect(&args.reference, platform.as_ref())?;
    if args.format == Format::Json {
        printer::json(&details)?;
        return Ok(ExitCode::SUCCESS);
    }
    for (i, image) in details.iter().enumerate() {
        if i > 0 {
            printer::out("")?;
        }
        print_image(image)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_image(image: &ImageDetails) -> anyhow::Result<()> {
    let field =
        |name: &str, value: String| printer::out(format!("{:<14}{value}", format!("{name}:")));
    let list = |values: &Option<Vec<String>>| {
        values
            .as_ref()
            .map(|v| serde_json::to_string(v).unwrap_or_default())
            .unwrap_or_else(|| "-".into())
    };
    field(
        "References",
        if image.references.is_empty() {
            "<none>".into()
        } else {
            image.references.join(", ")
        },
    )?;
    field("Digest", image.manifest_digest.to_string())?;
    field("Media type", image.media_type.clone())?;
    for index in &image.index_digests {
        field("Index", index.to_string())?;
    }
    field(
        "Platform",
        image.platform.clone().unwrap_or_else(|| "-".into()),
    )?;
    field(
        "Config",
        image
            .config_digest
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "-".into()),
    )?;
    field(
        "Created",
        image.created.clone().unwrap_or_else(|| "-".into()),
    )?;
    if let Some(author) = &image.author {
        field("Author", author.clone())?;
    }
    field(
        "Size",
        format!("{} ({} bytes)", size(image.size), image.size),
    )?;
    field(
        "Complete",
        if image.complete {
            "yes".into()
        } else {
            "no (pull it again)".into()
        },
    )?;
    if !image.holders.is_empty() {
        field("Used by", image.holders.join(", "))?;
    }
    let config = &image.config;
    field("Entrypoint", list(&config.entrypoint))?;
    field("Cmd", list(&config.cmd))?;
    field(
        "WorkingDir",
        config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "-".into()),
    )?;
    field(
        "User",
        config
            .user
            .clone()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "-".into()),
    )?;
    field(
        "StopSignal",
        config.stop_signal.clone().unwrap_or_else(|| "-".into()),
    )?;
    printer::out("Env:")?;
    for variable in config.env.iter().flatten() {
        printer::out(format!("  {variable}"))?;
    }
    printer::out("Labels:")?;
    for (key, value) in config.labels.iter().flatten() {
        printer::out(format!("  {key}={value}"))?;
    }
    printer::out("Layers:")?;
    for layer in &image.layers {
        printer::out(format!(
            "  {:>2}  {}  {}  {}",
            layer.position,
            layer.digest,
            size(layer.size),
            layer.media_type
        ))?;
        printer::out(format!(
            "      diff_id {}  {}",
            layer
                .diff_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "-".into()),
            layer
                .uncompressed_size
                .map(size)
                .unwrap_or_else(|| "-".into())
        ))?;
    }
    Ok(())
}
