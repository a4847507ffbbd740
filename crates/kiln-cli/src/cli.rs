//! Command-line arguments: parsed here, acted on in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// kiln: VM images for microVM sandboxes, pulled, verified and kept once.
#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    propagate_version = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Store directory [default: $KILN_ROOT, else $XDG_DATA_HOME/kiln, else ~/.local/share/kiln]
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Config file naming the image sources [default: $KILN_CONFIG, else $XDG_CONFIG_HOME/kiln/config.toml, else ~/.config/kiln/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pull an image from a registry into the store
    Pull(PullArgs),
    /// Push an image from the store to a registry
    Push(PushArgs),
    /// List images in the store
    #[command(visible_alias = "ls")]
    Images(ImagesArgs),
    /// Show an image's manifest, config and layers
    Inspect(InspectArgs),
    /// Remove images
    Rmi(RmiArgs),
    /// Remove unused images, dangling blobs and abandoned downloads
    Prune(PruneArgs),
    /// Verify every blob and the catalog
    Fsck(FsckArgs),
    /// Build what a microVM boots from an image (cached in the store)
    Rootfs(RootfsArgs),
    /// Make a disk's current content a new image (its image plus one layer)
    Snapshot {
        /// Disk name
        disk: String,
        /// Name of the new image (e.g. localhost/my-sandbox:1)
        reference: String,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
    /// Writable disks for sandboxes, made from images
    Disk {
        #[command(subcommand)]
        command: DiskCommand,
    },
    /// Image sources beyond OCI registries (release bundles, catalogs, image servers)
    Sources {
        #[command(subcommand)]
        command: SourcesCommand,
    },
    /// List what a source offers, marking what is installed
    Avail(AvailArgs),
    /// Refresh the cached image lists of imgapi sources
    Update {
        /// Sources to refresh [default: every imgapi source]
        sources: Vec<String>,
    },
    /// Install an IMGAPI image from a local manifest and file (imgadm install -m -f)
    Install(InstallArgs),
    /// Log in to a registry: check the credentials, then keep them (keyring, else a mode 0600 file)
    Login(LoginArgs),
    /// Forget what `kiln login` kept for a registry
    Logout {
        /// Registry host (ghcr.io, docker.io, 127.0.0.1:5000)
        host: String,
    },
    /// List the registries kiln has credentials for and where they come from (never a secret)
    Registries {
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Load images from a tar archive (docker save or OCI layout), from -i FILE or stdin
    Load(LoadArgs),
    /// Save images to a tar archive (docker or OCI layout), to -o FILE or stdout
    Save(SaveArgs),
    /// Image commands, docker style (`kiln image ls|rm|inspect|prune|pull`)
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image
    Pull(PullArgs),
    /// List images
    #[command(alias = "list")]
    Ls(ImagesArgs),
    /// Show an image
    Inspect(InspectArgs),
    /// Remove images
    #[command(alias = "remove")]
    Rm(RmiArgs),
    /// Remove unused images and blobs
    Prune(PruneArgs),
}

#[derive(Debug, Subcommand)]
pub enum SourcesCommand {
    /// Add a source
    Add(SourcesAddArgs),
    /// List the sources
    #[command(alias = "list")]
    Ls {
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove a source (images installed from it stay)
    #[command(alias = "remove")]
    Rm {
        /// Source name
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceTypeArg {
    /// Release bundles published as GitHub release assets
    GithubRelease,
    /// A JSON or TOML checksum catalog (path or URL)
    Catalog,
    /// An IMGAPI image server (SmartOS imgadm)
    Imgapi,
}

#[derive(Debug, Args)]
pub struct SourcesAddArgs {
    /// Source name (images are then SOURCE://NAME[@VERSION])
    pub name: String,
    /// API base (github-release), catalog path or URL (catalog), server URL (imgapi)
    pub url: String,
    /// Source type
    #[arg(long = "type", value_enum)]
    pub source_type: SourceTypeArg,
    /// OWNER/NAME of the repository publishing the bundles (github-release)
    #[arg(long)]
    pub repo: Option<String>,
    /// OWNER/NAME of the repository releasing the VMM [default: firecracker-microvm/firecracker]
    #[arg(long)]
    pub vmm_repo: Option<String>,
    /// Environment variable holding an API token (sent to the source's own host only)
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,
}

#[derive(Debug, Args)]
pub struct AvailArgs {
    /// Source name
    pub source: String,
    /// imgapi filters: field=value, field=~substring, field=true|false
    pub filters: Vec<String>,
    /// imgapi: comma-separated columns [default: uuid,name,version,os,type,published_at]
    #[arg(short = 'o', long = "output", value_name = "FIELDS")]
    pub fields: Option<String>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The image manifest (JSON)
    #[arg(short = 'm', long = "manifest", value_name = "MANIFEST")]
    pub manifest: PathBuf,
    /// The image file, as published (compressed or not)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Source name the image is listed under (SOURCE://UUID)
    #[arg(long, default_value = "local")]
    pub source: String,
    /// No progress output
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format of the result
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable
    Table,
    /// JSON
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    /// Ask the registry whether the tag moved
    Always,
    /// Use the cached image when there is one (no network)
    Missing,
    /// Fail unless cached
    Never,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference (docker syntax: alpine, host:port/repo:tag, repo@sha256:...; or SOURCE://NAME[@VERSION])
    pub reference: String,
    /// Platform to pull from a multi-platform image, os/arch[/variant] [default: the host's]
    #[arg(long)]
    pub platform: Option<String>,
    /// Download again even what the store has
    #[arg(long)]
    pub force: bool,
    /// When to contact the registry
    #[arg(long, value_enum, default_value_t = Policy::Missing)]
    pub policy: Policy,
    /// No progress output
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Layers downloaded at once
    #[arg(long, default_value_t = kiln::DEFAULT_CONCURRENCY as u16, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Output format of the result
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Benchmarking: decompress layers on the writing thread instead of a thread of their own
    #[arg(long, hide = true)]
    pub inline_diff_id: bool,
    /// Credentials for this pull's registry, tried before any other (docs/credentials.md)
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
    /// Also build this root filesystem, unpacking layers as they download (repeatable); its path is printed after the digest
    #[arg(long = "rootfs", value_enum, value_name = "FORMAT")]
    pub rootfs: Vec<RootfsFormatArg>,
    /// Size of the ext4 image `--rootfs ext4` builds (e.g. 512M, 2G) [default: content plus headroom]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub rootfs_size: Option<u64>,
    /// With `--rootfs erofs` alone: build it layered (a metadata image plus
    /// one data file per layer, shared between images); the metadata path
    /// and then each layer file's are printed after the digest
    #[arg(long)]
    pub layered: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CredentialStoreArg {
    /// The keyring when one answers, else the file
    Auto,
    /// auth.json beside the config file, mode 0600
    File,
    /// The OS keyring (Secret Service); an error when none answers
    Keyring,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Registry host (ghcr.io, docker.io, 127.0.0.1:5000)
    pub host: String,
    /// User name [default: asked on a terminal]
    #[arg(short, long)]
    pub username: Option<String>,
    /// Read the password (one line) from standard input
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Where to keep the password
    #[arg(long, value_enum, env = "KILN_CREDENTIAL_STORE", default_value_t = CredentialStoreArg::Auto)]
    pub credential_store: CredentialStoreArg,
}

/// How to reach a registry (pull, push, login, rootfs referrers).
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Allow plain HTTP or unverified TLS for this registry
    #[arg(long)]
    pub insecure: bool,
    /// Trust the CA certificates in this PEM file (repeatable)
    #[arg(long = "ca-certs", value_name = "PEM")]
    pub ca_certs: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Image in the store (name, digest or digest prefix)
    pub image: String,
    /// Where to push (host[:port]/repository[:tag]) [default: the image's own registry name]
    pub destination: Option<String>,
    /// Also publish this root filesystem as a referrer of the image (OCI 1.1)
    #[arg(long, value_enum)]
    pub rootfs: Option<RootfsFormatArg>,
    /// Size of the ext4 root filesystem published with --rootfs ext4
    #[arg(long, value_parser = parse_size, requires = "rootfs")]
    pub rootfs_size: Option<u64>,
    /// The image for this platform, when a name has several
    #[arg(long)]
    pub platform: Option<String>,
    /// Upload blobs in chunks of this size (e.g. 8M) instead of one request each
    #[arg(long, value_parser = parse_size)]
    pub chunk_size: Option<u64>,
    /// No progress output
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Credentials for the destination registry, tried before any other (docs/credentials.md)
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
    /// Blobs uploaded at once
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Output format of the result
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Read the archive from this file (plain, gzip or zstd) [default: stdin]
    #[arg(short, long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Name for the first image, instead of the names in the archive
    #[arg(short, long, value_name = "REF")]
    pub tag: Option<String>,
    /// Platform to load from a multi-platform index (the only platform loaded), os/arch[/variant]
    #[arg(long)]
    pub platform: Option<String>,
    /// No progress output
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format of the result
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArchiveFormatArg {
    /// docker 25+ layout: OCI layout plus manifest.json (docker load, podman, skopeo docker-archive:)
    Docker,
    /// OCI image layout (skopeo oci-archive:)
    Oci,
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Images: names, digests or digest prefixes
    #[arg(required = true)]
    pub references: Vec<String>,
    /// Write the archive to this file (atomically) [default: stdout]
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Archive layout
    #[arg(long, value_enum, default_value_t = ArchiveFormatArg::Docker)]
    pub format: ArchiveFormatArg,
    /// No progress output
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Only print manifest digests
    #[arg(short, long)]
    pub quiet: bool,
    /// Show full digests
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image name, digest or digest prefix
    pub reference: String,
    /// Only the image for this platform
    #[arg(long)]
    pub platform: Option<String>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Image names, digests or digest prefixes
    #[arg(required = true)]
    pub references: Vec<String>,
    /// Remove names of images in use too (the images stay for their users), and every name of an image given by digest
    #[arg(short, long)]
    pub force: bool,
    /// Only the image for this platform
    #[arg(long)]
    pub platform: Option<String>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Show what would be removed, remove nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation
    #[arg(short = 'y', long, alias = "force")]
    pub yes: bool,
    /// Remove every image no sandbox uses, not only unnamed ones
    #[arg(short, long)]
    pub all: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct FsckArgs {
    /// Quarantine corrupt blobs and mark their images for a new pull
    #[arg(long)]
    pub repair: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// No progress output
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RootfsFormatArg {
    /// gzip-compressed newc cpio archive (`-initrd`)
    Initramfs,
    /// ext4 raw disk image (root block device)
    Ext4,
    /// EROFS image (read-only root filesystem)
    Erofs,
}

#[derive(Debug, Args)]
pub struct RootfsArgs {
    /// Image name, digest or digest prefix
    pub reference: String,
    /// What to build
    #[arg(long, value_enum)]
    pub format: RootfsFormatArg,
    /// Copy the result here (a reflink where the filesystem can; with --layered, a directory); without it, print the path in the store
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// The image for this platform
    #[arg(long)]
    pub platform: Option<String>,
    /// Size of an ext4 image (e.g. 512M, 2G) [default: content plus headroom]
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// EROFS only: a small metadata image plus one data file per layer,
    /// shared by every image with that layer (mount with device= for each,
    /// in the order printed; -o DIR copies them into DIR)
    #[arg(long, conflicts_with = "size")]
    pub layered: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
    /// Convert here even when the image's registry has this rootfs as a referrer
    #[arg(long)]
    pub no_referrers: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `512M`, `2G`, `1048576`: binary units, as disk tools count.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 512M, 2G)"))?;
    let factor: u64 = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use K, M, G or T)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("{text:?} is out of range"))
}

#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Create a sandbox disk from an image
    Create(DiskCreateArgs),
    /// List disks
    #[command(alias = "list")]
    Ls(DiskLsArgs),
    /// Print a disk's path
    Path {
        /// Disk name
        name: String,
    },
    /// Remove a disk
    #[command(alias = "remove")]
    Rm {
        /// Disk names
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiskFormatArg {
    /// Reflink where the filesystem can, else qcow2 overlay, else sparse copy
    Auto,
    /// Raw image (reflink, else sparse copy)
    Raw,
    /// qcow2 overlay on the cached raw image
    Qcow2,
}

#[derive(Debug, Args)]
pub struct DiskCreateArgs {
    /// Disk name (letters, digits, '_', '.', '-')
    pub name: String,
    /// Image name, digest or digest prefix
    #[arg(long)]
    pub image: String,
    /// How to make the disk
    #[arg(long, value_enum, default_value_t = DiskFormatArg::Auto)]
    pub format: DiskFormatArg,
    /// Size of the ext4 filesystem (e.g. 2G) [default: content plus headroom]
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// The image for this platform
    #[arg(long)]
    pub platform: Option<String>,
    /// Print the disk as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DiskLsArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Only print names
    #[arg(short, long)]
    pub quiet: bool,
}
