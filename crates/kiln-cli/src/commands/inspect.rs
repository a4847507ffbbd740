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
    if !image.rootfs.is_empty() {
        printer::out("Root filesystems:")?;
        for rootfs in &image.rootfs {
            printer::out(format!(
                "  {:<10} {:<16} {:>9}  {}{}",
                rootfs.format,
                // A layer file's options also name its blob (JSON has them all).
                match rootfs.options.split(' ').next() {
                    Some("") | None => "default",
                    Some(first) => first,
                },
                size(rootfs.size),
                rootfs.path.display(),
                if rootfs.current {
                    String::new()
                } else {
                    format!(
                        "  (older converter {}: `kiln prune` removes it unless a disk uses it)",
                        rootfs.converter_version
                    )
                }
            ))?;
        }
    }
    if let Some(source) = &image.source {
        return print_source(source);
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

fn print_source(source: &kiln::SourceDetails) -> anyhow::Result<()> {
    let field =
        |name: &str, value: String| printer::out(format!("{:<14}{value}", format!("{name}:")));
    let text = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".into());
    field(
        "Source",
        format!("{} ({}, {})", source.source, source.source_type, source.url),
    )?;
    field("Name", source.name.clone())?;
    field("Version", text(&source.version))?;
    if source.arch.is_some() {
        field("Arch", text(&source.arch))?;
    }
    if source.uuid.is_some() {
        field("UUID", text(&source.uuid))?;
        field("Origin", text(&source.origin))?;
        field("Compression", text(&source.compression))?;
    }
    if source.boot_args.is_some() {
        field("Boot args", text(&source.boot_args))?;
    }
    field("Published", text(&source.published_at))?;
    // The fields of the published manifest a user asks about.
    if let Some(manifest) = &source.manifest {
        let get = |path: &[&str]| {
            let mut value = manifest;
            for part in path {
                value = value.get(part)?;
            }
            value.as_str().map(str::to_string)
        };
        let arch = source.arch.clone().unwrap_or_default();
        let rows: [(&str, Vec<&str>); 8] = [
            ("Kernel", vec!["artifacts", &arch, "kernel", "version"]),
            (
                "Kernel source",
                vec!["artifacts", &arch, "kernel", "source"],
            ),
            ("Distro", vec!["artifacts", &arch, "rootfs", "distro"]),
            (
                "Distro ver.",
                vec!["artifacts", &arch, "rootfs", "distro_version"],
            ),
            ("Profile", vec!["artifacts", &arch, "rootfs", "profile"]),
            ("VMM", vec!["firecracker", "version"]),
            ("Build date", vec!["build", "date"]),
            ("Build commit", vec!["build", "commit"]),
        ];
        for (name, path) in rows {
            if let Some(value) = get(&path) {
                field(name, value)?;
            }
        }
        for (name, key) in [
            ("Type", "type"),
            ("OS", "os"),
            ("Description", "description"),
        ] {
            if let Some(value) = get(&[key]) {
                field(name, value)?;
            }
        }
    }
    printer::out("Files:")?;
    for file in &source.files {
        printer::out(format!(
            "  {:<16} {:>9}  {}  {}",
            file.role,
            size(file.size),
            file.digest,
            file.path.display()
        ))?;
    }
    Ok(())
}
