//! One module per command.

mod disk;
mod fsck;
mod images;
mod inspect;
mod prune;
mod pull;
mod rmi;
mod rootfs;

use std::process::ExitCode;

use anyhow::Context;
use kiln::{Manager, Platform};

use crate::cli::{Cli, Command, ImageCommand};

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let open = || open_manager(cli.root.clone());
    match cli.command {
        Command::Pull(args)
        | Command::Image {
            command: ImageCommand::Pull(args),
        } => pull::run(&open()?, args),
        Command::Images(args)
        | Command::Image {
            command: ImageCommand::Ls(args),
        } => images::run(&open()?, args),
        Command::Inspect(args)
        | Command::Image {
            command: ImageCommand::Inspect(args),
        } => inspect::run(&open()?, args),
        Command::Rmi(args)
        | Command::Image {
            command: ImageCommand::Rm(args),
        } => rmi::run(&open()?, args),
        Command::Prune(args)
        | Command::Image {
            command: ImageCommand::Prune(args),
        } => prune::run(&open()?, args),
        Command::Fsck(args) => fsck::run(&open()?, args),
        Command::Rootfs(args) => rootfs::run(&open()?, args),
        Command::Disk { command } => disk::run(&open()?, command),
        Command::Snapshot {
            disk,
            reference,
            json,
        } => disk::snapshot(&open()?, &disk, &reference, json),
    }
}

fn open_manager(root: Option<std::path::PathBuf>) -> anyhow::Result<Manager> {
    let root = kiln::resolve_root(root)
        .context("no store directory: pass --root DIR or set KILN_ROOT (HOME is not set)")?;
    Manager::open(&root).with_context(|| format!("cannot open the store at {}", root.display()))
}

fn parse_platform(text: Option<&str>) -> anyhow::Result<Option<Platform>> {
    Ok(text
        .map(str::parse::<Platform>)
        .transpose()
        .map_err(kiln::Error::from)?)
}
