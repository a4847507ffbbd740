use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use kiln::{LoadOptions, Manager};

use crate::cli::{Format, LoadArgs};
use crate::printer;
use crate::progress::Reporter;

pub fn run(manager: &Manager, args: LoadArgs) -> anyhow::Result<ExitCode> {
    let options = LoadOptions {
        platform: super::parse_platform(args.platform.as_deref())?,
        tag: args.tag.clone(),
        archive_name: match &args.input {
            Some(path) => path.display().to_string(),
            None => "stdin".into(),
        },
    };
    let reporter = Arc::new(Reporter::new(args.quiet || args.format == Format::Json));
    let loaded = match &args.input {
        Some(path) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            manager.load(file, &options, reporter)?
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                return Err(kiln::Error::TerminalArchive {
                    stream: "stdin",
                    action: "read",
                }
                .into());
            }
            manager.load(stdin.lock(), &options, reporter)?
        }
    };
    if args.format == Format::Json {
        printer::json(&loaded)?;
        return Ok(ExitCode::SUCCESS);
    }
    for image in &loaded {
        if !args.quiet {
            let names = if image.names.is_empty() {
                "<none>".to_string()
            } else {
                image.names.join(", ")
            };
            printer::status(format!(
                "loaded {names} ({}): {} layers",
                image.platform, image.layers
            ));
            if let Some(note) = &image.note {
                printer::status(format!("note: {note}"));
            }
        }
        printer::out(&image.manifest_digest)?;
    }
    Ok(ExitCode::SUCCESS)
}
