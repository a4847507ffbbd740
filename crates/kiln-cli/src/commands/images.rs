use std::process::ExitCode;

use kiln::Manager;

use crate::cli::{Format, ImagesArgs};
use crate::printer::{self, ago, parse_rfc3339, size};

pub fn run(manager: &Manager, args: ImagesArgs) -> anyhow::Result<ExitCode> {
    let images = manager.images()?;
    if args.format == Format::Json {
        printer::json(&images)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.quiet {
        let mut seen = std::collections::HashSet::new();
        for image in &images {
            if seen.insert(image.manifest_digest.clone()) {
                printer::out(&image.manifest_digest)?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|image| {
            let digest = if args.no_trunc {
                image.manifest_digest.to_string()
            } else {
                image.manifest_digest.short().to_string()
            };
            let mut reference = image.reference.clone().unwrap_or_else(|| "<none>".into());
            if !image.complete {
                reference.push_str(" (incomplete)");
            }
            vec![
                reference,
                digest,
                image.platform.clone().unwrap_or_else(|| "-".into()),
                image.layers.to_string(),
                size(image.size),
                image
                    .created
                    .as_deref()
                    .and_then(parse_rfc3339)
                    .map(ago)
                    .unwrap_or_else(|| "-".into()),
                ago(image.last_used_at),
            ]
        })
        .collect();
    printer::table(
        &[
            "REFERENCE",
            "DIGEST",
            "PLATFORM",
            "LAYERS",
            "SIZE",
            "CREATED",
            "LAST USED",
        ],
        &rows,
    )?;
    Ok(ExitCode::SUCCESS)
}
