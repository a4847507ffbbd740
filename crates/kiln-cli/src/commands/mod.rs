//! One module per command.

mod disk;
mod fsck;
mod images;
mod inspect;
mod load;
mod login;
mod prune;
mod pull;
mod push;
mod rmi;
mod rootfs;
mod save;
mod sources;

use std::process::ExitCode;

use anyhow::Context;
use kiln::{Manager, Platform};

use crate::cli::{Cli, Command, ImageCommand};

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let open = || open_manager(cli.root.clone(), cli.config.clone());
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
        Command::Push(args) => push::run(&open()?, args),
        Command::Load(args) => load::run(&open()?, args),
        Command::Save(args) => save::run(&open()?, args),
        Command::Fsck(args) => fsck::run(&open()?, args),
        Command::Rootfs(args) => rootfs::run(&open()?, args),
        Command::Disk { command } => disk::run(&open()?, command),
        Command::Sources { command } => sources::sources(&open()?, command),
        Command::Avail(args) => sources::avail(&open()?, args),
        Command::Update { sources } => sources::update(&open()?, &sources),
        Command::Install(args) => sources::install(&open()?, args),
        Command::Login(args) => login::login(&open()?, args),
        Command::Logout { host } => login::logout(&open()?, &host),
        Command::Registries { format } => login::registries(&open()?, format),
        Command::Snapshot {
            disk,
            reference,
            json,
        } => disk::snapshot(&open()?, &disk, &reference, json),
    }
}

fn open_manager(
    root: Option<std::path::PathBuf>,
    config: Option<std::path::PathBuf>,
) -> anyhow::Result<Manager> {
    let root = kiln::resolve_root(root)
        .context("no store directory: pass --root DIR or set KILN_ROOT (HOME is not set)")?;
    let manager = Manager::open(&root)
        .with_context(|| format!("cannot open the store at {}", root.display()))?;
    Ok(match config {
        Some(path) => manager.with_config(path),
        None => manager,
    })
}

/// A runtime for the network commands.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn parse_platform(text: Option<&str>) -> anyhow::Result<Option<Platform>> {
    Ok(text
        .map(str::parse::<Platform>)
        .transpose()
        .map_err(kiln::Error::from)?)
}
