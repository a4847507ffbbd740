//! Image sources beyond OCI registries (docs/sources.md): the sources
//! configuration, release bundles from GitHub releases, checksum catalogs
//! and IMGAPI image servers, each driven through the real `kiln` binary
//! against a loopback fake of its server (tests/support/fakes.rs). The
//! helpers live here; each kind of source has a module under `sources/`.

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use support::bundles::VMM_REPO;
use support::fakes::sha256_hex;
use support::{Kiln, Run};

// ---------------------------------------------------------------------------
// Helpers

fn to_run(output: Output) -> Run {
    Run {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).to_string(),
    }
}

/// `kiln ARGS` with extra environment variables.
fn run_env(kiln: &Kiln, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = kiln.command(args);
    for (name, value) in env {
        command.env(name, value);
    }
    to_run(command.output().unwrap())
}

fn images(kiln: &Kiln) -> Vec<Value> {
    kiln.run(&["images", "--format", "json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .clone()
}

fn references(kiln: &Kiln) -> Vec<String> {
    images(kiln)
        .iter()
        .filter_map(|i| i["reference"].as_str().map(String::from))
        .collect()
}

/// `kiln inspect --format json REF`, first (only) image.
fn inspect(kiln: &Kiln, reference: &str) -> Value {
    let details = kiln
        .run(&["inspect", "--format", "json", reference])
        .ok()
        .json();
    assert_eq!(
        details.as_array().map(Vec::len),
        Some(1),
        "inspect {reference}: {details}"
    );
    details[0].clone()
}

/// A JSON string holding a path.
fn path_of(value: &Value) -> PathBuf {
    PathBuf::from(
        value
            .as_str()
            .unwrap_or_else(|| panic!("expected a path, got {value}")),
    )
}

fn read(value: &Value) -> Vec<u8> {
    let path = path_of(value);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A file (path in a JSON string) holds `expected`; on failure shows sizes
/// and digests, not megabytes of bytes.
fn assert_file(path: &Value, expected: &[u8], what: &str) {
    let actual = read(path);
    assert!(
        actual == expected,
        "{what}: {} holds {} bytes (sha256:{}), expected {} bytes (sha256:{})",
        path_of(path).display(),
        actual.len(),
        sha256_hex(&actual),
        expected.len(),
        sha256_hex(expected)
    );
}

/// `kiln avail SOURCE --format json [FILTER...]`.
fn avail(kiln: &Kiln, source: &str, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["avail", source, "--format", "json"];
    args.extend_from_slice(filters);
    kiln.run(&args).ok().json().as_array().unwrap().clone()
}

fn field_set(entries: &[Value], field: &str) -> BTreeSet<String> {
    entries
        .iter()
        .map(|e| {
            e[field]
                .as_str()
                .unwrap_or_else(|| panic!("no {field} in {e}"))
                .to_string()
        })
        .collect()
}

fn installed(entries: &[Value], name: &str) -> bool {
    let entry = entries
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not listed: {entries:?}"));
    entry["installed"]
        .as_bool()
        .unwrap_or_else(|| panic!("installed is not a boolean: {entry}"))
}

/// After a failed pull: no image of the source and a clean store.
fn assert_nothing_installed(kiln: &Kiln, source: &str) {
    let prefix = format!("{source}://");
    let found: Vec<String> = references(kiln)
        .into_iter()
        .filter(|r| r.starts_with(&prefix))
        .collect();
    assert!(found.is_empty(), "nothing of {source} installed: {found:?}");
    kiln.run(&["fsck"]).ok();
}

/// `word` appears in `text` not as part of a longer word (`os` is not in `smartos://`).
fn mentions_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

fn source_entry<'a>(listed: &'a Value, name: &str) -> Option<&'a Value> {
    listed
        .as_array()
        .unwrap_or_else(|| panic!("sources ls --format json is an array: {listed}"))
        .iter()
        .find(|s| s["name"] == name)
}

/// Overwrites one byte of a (read-only) store file in place, as a user with
/// `chmod u+w` and an editor could.
fn corrupt_in_place(path: &Path) {
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o200)).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let mut byte = [0u8; 1];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut byte, 1024)
        .unwrap();
    byte[0] ^= 0xff;
    file.write_all_at(&byte, 1024).unwrap();
    file.sync_all().unwrap();
}

// ---------------------------------------------------------------------------
// Sources configuration

#[test]
fn a_fresh_config_lists_the_built_in_sources_and_writes_nothing() {
    let kiln = Kiln::new();
    let listed = kiln.run(&["sources", "ls", "--format", "json"]).ok().json();
    let sbx = source_entry(&listed, "sbx").unwrap_or_else(|| panic!("sbx is built in: {listed}"));
    assert_eq!(sbx["type"], "github-release", "{sbx}");
    assert_eq!(sbx["repo"], "slok/sbx-images", "{sbx}");
    assert_eq!(sbx["url"], "https://api.github.com", "{sbx}");
    assert_eq!(sbx["vmm_repo"], VMM_REPO, "{sbx}");
    let smartos =
        source_entry(&listed, "smartos").unwrap_or_else(|| panic!("smartos is built in: {listed}"));
    assert_eq!(smartos["type"], "imgapi", "{smartos}");
    assert_eq!(smartos["url"], "https://images.smartos.org", "{smartos}");
    let table = kiln.run(&["sources", "ls"]).ok();
    assert!(
        table.stdout.contains("sbx") && table.stdout.contains("smartos"),
        "{}",
        table.stdout
    );
    assert!(
        !kiln.config_path().exists(),
        "listing the defaults writes no config file"
    );
}

#[test]
fn removing_a_built_in_source_writes_the_config_and_it_stays_removed() {
    let kiln = Kiln::new();
    kiln.run(&["sources", "rm", "sbx"]).ok();
    let text = std::fs::read_to_string(kiln.config_path()).expect("sources rm writes the config");
    let config: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("the config is TOML ({e}):\n{text}"));
    assert_eq!(config["version"].as_integer(), Some(1), "{text}");
    let sources = config["sources"].as_table().unwrap();
    assert!(!sources.contains_key("sbx"), "{text}");
    assert_eq!(
        sources["smartos"]["type"].as_str(),
        Some("imgapi"),
        "{text}"
    );
    assert_eq!(
        sources["smartos"]["url"].as_str(),
        Some("https://images.smartos.org"),
        "every remaining source is spelled out: {text}"
    );

    let listed = kiln.run(&["sources", "ls", "--format", "json"]).ok().json();
    assert!(source_entry(&listed, "sbx").is_none(), "{listed}");
    assert!(source_entry(&listed, "smartos").is_some(), "{listed}");
    let table = kiln.run(&["sources", "ls"]).ok();
    assert!(!mentions_word(&table.stdout, "sbx"), "{}", table.stdout);
    let pull = kiln.run(&["pull", "sbx://v0.1.0"]).fails(1);
    assert!(pull.stderr.contains("sbx"), "{}", pull.stderr);
    kiln.run(&["sources", "rm", "sbx"]).fails(1);
}

#[test]
fn sources_add_refuses_existing_and_invalid_names_and_a_release_source_without_repo() {
    let kiln = Kiln::new();
    let existing = kiln
        .run(&[
            "sources",
            "add",
            "smartos",
            "http://127.0.0.1:9",
            "--type",
            "imgapi",
        ])
        .fails(1);
    assert!(existing.stderr.contains("smartos"), "{}", existing.stderr);
    for bad in ["a/b", "Upper", "-dash", ".dot", "has space", ""] {
        let run = kiln.run(&[
            "sources",
            "add",
            bad,
            "http://127.0.0.1:9/c.json",
            "--type",
            "catalog",
        ]);
        assert_ne!(
            run.status, 0,
            "{bad:?} is not a source name:\n{}",
            run.stderr
        );
    }
    let no_repo = kiln.run(&[
        "sources",
        "add",
        "gh",
        "http://127.0.0.1:9",
        "--type",
        "github-release",
    ]);
    assert_ne!(no_repo.status, 0, "--repo is required: {}", no_repo.stderr);
    assert!(no_repo.stderr.contains("repo"), "{}", no_repo.stderr);
    assert!(!kiln.config_path().exists(), "a refused add writes nothing");

    kiln.run(&[
        "sources",
        "add",
        "my-cat_1.x",
        "http://127.0.0.1:9/c.json",
        "--type",
        "catalog",
    ])
    .ok();
    kiln.run(&[
        "sources",
        "add",
        "gh",
        "http://127.0.0.1:9",
        "--type",
        "github-release",
        "--repo",
        "acme/images",
        "--vmm-repo",
        "acme/firecracker",
        "--token-env",
        "ACME_TOKEN",
    ])
    .ok();
    let listed = kiln.run(&["sources", "ls", "--format", "json"]).ok().json();
    let catalog = source_entry(&listed, "my-cat_1.x").unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(catalog["type"], "catalog");
    assert_eq!(catalog["url"], "http://127.0.0.1:9/c.json");
    let gh = source_entry(&listed, "gh").unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(gh["type"], "github-release");
    assert_eq!(gh["repo"], "acme/images");
    assert_eq!(gh["vmm_repo"], "acme/firecracker");
    assert_eq!(gh["token_env"], "ACME_TOKEN");
    assert!(
        source_entry(&listed, "sbx").is_some() && source_entry(&listed, "smartos").is_some(),
        "adding keeps the built-in sources: {listed}"
    );
}

#[test]
fn a_config_file_kiln_cannot_parse_is_an_error_naming_it_and_is_kept() {
    let kiln = Kiln::new();
    let broken = "version = 1\n\n[sources.sbx\ntype = \"github-release\"\n";
    std::fs::write(kiln.config_path(), broken).unwrap();
    let run = kiln.run(&["sources", "ls"]).fails(1);
    let path = kiln.config_path().display().to_string();
    assert!(run.stderr.contains(&path), "names the file: {}", run.stderr);
    assert!(
        run.stderr.contains("line 3") || run.stderr.contains(":3:"),
        "names the line: {}",
        run.stderr
    );
    kiln.run(&[
        "sources",
        "add",
        "mycat",
        "http://127.0.0.1:9/c.json",
        "--type",
        "catalog",
    ])
    .fails(1);
    assert_eq!(
        std::fs::read_to_string(kiln.config_path()).unwrap(),
        broken,
        "never silently replaced"
    );

    let kiln = Kiln::new();
    std::fs::write(
        kiln.config_path(),
        "version = 1\n\n[sources.mycat]\ntype = \"catalog\"\nurl = \"http://127.0.0.1:9/c.json\"\ncolour = \"red\"\n",
    )
    .unwrap();
    let run = kiln.run(&["sources", "ls"]).fails(1);
    assert!(
        run.stderr.contains("colour"),
        "unknown keys are refused by name: {}",
        run.stderr
    );
}

#[path = "sources/catalog.rs"]
mod catalog;
#[path = "sources/imgapi.rs"]
mod imgapi;
#[path = "sources/release_bundles.rs"]
mod release_bundles;
