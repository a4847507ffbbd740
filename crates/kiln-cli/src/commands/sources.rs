//! `sources add|ls|rm`, `avail`, `update`, `install`.

use std::process::ExitCode;
use std::sync::Arc;

use kiln::{Manager, NoProgress, SourceConfig, SourceType};

use crate::cli::{AvailArgs, Format, InstallArgs, SourceTypeArg, SourcesCommand};
use crate::printer::{self, size};
use crate::progress::Reporter;

pub fn sources(manager: &Manager, command: SourcesCommand) -> anyhow::Result<ExitCode> {
    match command {
        SourcesCommand::Add(args) => {
            let source = SourceConfig {
                source_type: match args.source_type {
                    SourceTypeArg::GithubRelease => SourceType::GithubRelease,
                    SourceTypeArg::Catalog => SourceType::Catalog,
                    SourceTypeArg::Imgapi => SourceType::Imgapi,
                },
                url: args.url,
                repo: args.repo,
                vmm_repo: args.vmm_repo,
                token_env: args.token_env,
            };
            let added = manager.add_source(&args.name, source)?;
            printer::status(format!(
                "added source {} ({}) to {}",
                added.name,
                added.source_type,
                manager.config_path().display()
            ));
        }
        SourcesCommand::Ls { format } => {
            let sources = manager.sources()?;
            if format == Format::Json {
                printer::json(&sources)?;
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = sources
                .into_iter()
                .map(|s| {
                    vec![
                        s.name,
                        s.source_type,
                        s.url,
                        s.repo.unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            printer::table(&["NAME", "TYPE", "URL", "REPO"], &rows)?;
        }
        SourcesCommand::Rm { name } => {
            manager.remove_source(&name)?;
            printer::status(format!("removed source {name}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn yes_no(installed: bool) -> String {
    if installed { "yes" } else { "-" }.to_string()
}

pub fn avail(manager: &Manager, args: AvailArgs) -> anyhow::Result<ExitCode> {
    let config = manager
        .config()?
        .sources
        .get(&args.source)
        .cloned()
        .ok_or_else(|| kiln::Error::UnknownSource {
            name: args.source.clone(),
            available: manager
                .sources()
                .unwrap_or_default()
                .into_iter()
                .map(|s| s.name)
                .collect(),
        })?;
    if config.source_type != SourceType::Imgapi
        && (!args.filters.is_empty() || args.fields.is_some())
    {
        return Err(kiln::Error::WrongSourceType {
            name: args.source.clone(),
            actual: config.source_type.to_string(),
            expected: "imgapi (filters and -o are for image servers)",
        }
        .into());
    }
    let progress = Arc::new(NoProgress);
    let runtime = super::runtime()?;
    match config.source_type {
        SourceType::GithubRelease => {
            let releases = runtime.block_on(manager.avail_releases(&args.source, progress))?;
            if args.format == Format::Json {
                printer::json(&releases)?;
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = releases
                .into_iter()
                .map(|r| {
                    vec![
                        format!("{}://{}", args.source, r.version),
                        r.published_at.unwrap_or_else(|| "-".into()),
                        if r.prerelease { "yes" } else { "-" }.into(),
                        yes_no(r.installed),
                    ]
                })
                .collect();
            printer::table(&["IMAGE", "PUBLISHED", "PRERELEASE", "INSTALLED"], &rows)?;
        }
        SourceType::Catalog => {
            let source = manager.catalog_source(&args.source)?;
            let images = runtime.block_on(source.list_available(progress))?;
            if args.format == Format::Json {
                printer::json(&images)?;
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = images
                .into_iter()
                .map(|i| {
                    vec![
                        format!("{}://{}", args.source, i.name),
                        i.version.unwrap_or_else(|| "-".into()),
                        i.architectures.join(","),
                        yes_no(i.installed),
                        i.description.unwrap_or_default(),
                    ]
                })
                .collect();
            printer::table(
                &[
                    "IMAGE",
                    "VERSION",
                    "ARCHITECTURES",
                    "INSTALLED",
                    "DESCRIPTION",
                ],
                &rows,
            )?;
        }
        SourceType::Imgapi => {
            let filters = args
                .filters
                .iter()
                .map(|f| f.parse::<kiln::ImageFilter>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|detail| kiln::Error::InvalidSourceImageName {
                    reference: format!("{}://", args.source),
                    detail,
                })?;
            let images =
                runtime.block_on(manager.avail_images(&args.source, &filters, progress))?;
            if args.format == Format::Json {
                printer::json(&images)?;
                return Ok(ExitCode::SUCCESS);
            }
            let fields: Vec<String> = match &args.fields {
                Some(fields) => fields
                    .split(',')
                    .map(|f| f.trim().to_string())
                    .filter(|f| !f.is_empty())
                    .collect(),
                None => kiln::IMGAPI_DEFAULT_FIELDS
                    .iter()
                    .map(|f| f.to_string())
                    .collect(),
            };
            let headers: Vec<String> = fields.iter().map(|f| f.to_uppercase()).collect();
            let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
            let rows: Vec<Vec<String>> = images
                .iter()
                .map(|image| fields.iter().map(|f| kiln::field_text(image, f)).collect())
                .collect();
            printer::table(&header_refs, &rows)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn update(manager: &Manager, sources: &[String]) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    let progress = Arc::new(Reporter::new(false));
    let counts = runtime.block_on(manager.update_sources(sources, progress))?;
    if counts.is_empty() {
        printer::status("no imgapi source is configured; nothing to update");
    }
    for (source, count) in counts {
        printer::status(format!("{source}: {count} images available"));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn install(manager: &Manager, args: InstallArgs) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    let progress = Arc::new(Reporter::new(args.quiet || args.format == Format::Json));
    let installed = runtime.block_on(manager.install_image_file(
        &args.manifest,
        &args.file,
        &args.source,
        progress,
    ))?;
    if args.format == Format::Json {
        printer::json(&installed)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !args.quiet {
        printer::status(format!(
            "installed {} ({})",
            installed.reference,
            size(installed.bytes_downloaded)
        ));
    }
    printer::out(&installed.manifest_digest)?;
    Ok(ExitCode::SUCCESS)
}
