//! Registry credentials: `kiln login` / `logout` / `registries` against real
//! docker-registry servers (basic auth, token auth with the token server of
//! `.ci/token-server.py`, TLS with a private CA), the resolution order
//! (`--creds` → kiln login → kiln config → docker config.json → anonymous),
//! and checks that no password ever shows in output or in the store.

mod support;

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use support::{Env, Kiln, Run, env};

/// A password no registry accepts; must never show anywhere either.
const WRONG: &str = "wr0ng-Pa55word-q7";

/// Every output of every command these tests ran, for the leak checks.
static OUTPUTS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn record(args: &[&str], run: &Run) {
    OUTPUTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((args.join(" "), format!("{}\n{}", run.stdout, run.stderr)));
}

/// Runs kiln with the file store forced (never the developer's keyring),
/// `stdin` on standard input and `vars` in the environment.
fn kiln_with(kiln: &Kiln, args: &[&str], stdin: Option<&str>, vars: &[(&str, &str)]) -> Run {
    let mut command = kiln.command(args);
    command.env("KILN_CREDENTIAL_STORE", "file");
    for (name, value) in vars {
        command.env(name, value);
    }
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    if let Some(text) = stdin {
        // A kiln that refuses before reading its input closes the pipe.
        let written = child.stdin.take().unwrap().write_all(text.as_bytes());
        if let Err(error) = written {
            assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe, "{error}");
        }
    }
    let output = child.wait_with_output().unwrap();
    let run = Run {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).to_string(),
    };
    record(args, &run);
    run
}

fn kiln(kiln: &Kiln, args: &[&str]) -> Run {
    kiln_with(kiln, args, None, &[])
}

fn login(k: &Kiln, host: &str, user: &str, password: &str, extra: &[&str]) -> Run {
    let mut args = vec!["login", host, "-u", user, "--password-stdin"];
    args.extend_from_slice(extra);
    kiln_with(k, &args, Some(&format!("{password}\n")), &[])
}

fn auth_json(k: &Kiln) -> PathBuf {
    k.config_path().with_file_name("auth.json")
}

fn assert_credentials_required(run: &Run) {
    assert_eq!(run.status, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("(401)"), "{}", run.stderr);
    assert!(
        run.stderr.contains("hint: log in with `kiln login"),
        "{}",
        run.stderr
    );
}

/// Files under `dir` that contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else if metadata.is_file() {
            let bytes = std::fs::read(&path).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn basic_auth_login_pull_registries_logout() {
    let env = env();
    let k = Kiln::new();
    let host = env.auth_registry.as_str();
    let reference = format!("{host}/busybox:1");

    let refused = login(&k, host, &env.auth_user, WRONG, &["--insecure"]);
    refused.fails_ref(1);
    refused.assert_one_error();
    assert!(
        refused.stderr.contains("refused the login of kilnuser"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("nothing was stored"),
        "{}",
        refused.stderr
    );
    assert!(!auth_json(&k).exists(), "a refused login stores nothing");

    let ok = login(
        &k,
        host,
        &env.auth_user,
        &env.auth_password,
        &["--insecure"],
    );
    assert_eq!(ok.status, 0, "{}", ok.stderr);
    assert_eq!(ok.stdout.trim(), "Login Succeeded");
    let mode = std::fs::metadata(auth_json(&k))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "auth.json is private");
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(auth_json(&k)).unwrap()).unwrap();
    assert_eq!(stored["version"], 1);
    assert_eq!(stored["registries"][host]["username"], "kilnuser");
    assert_eq!(stored["registries"][host]["store"], "file");
    // The leak check's positive control: it finds the one file that holds the password.
    assert_eq!(
        files_containing(k.dir.path(), &env.auth_password),
        vec![auth_json(&k)]
    );

    // docker's config is empty: the credentials come from kiln's store.
    assert!(!k.docker_config().join("config.json").exists());
    let pulled = kiln(&k, &["pull", "--insecure", &reference]);
    assert_eq!(pulled.status, 0, "{}", pulled.stderr);
    let json = kiln(
        &k,
        &[
            "pull",
            "--insecure",
            "--policy",
            "always",
            "--format",
            "json",
            &reference,
        ],
    );
    assert_eq!(json.status, 0, "{}", json.stderr);

    let table = kiln(&k, &["registries"]);
    assert_eq!(table.status, 0, "{}", table.stderr);
    let line = table.stdout.lines().find(|l| l.starts_with(host)).unwrap();
    assert!(
        line.contains("kilnuser") && line.contains("kiln login ("),
        "{line}"
    );
    let listed = kiln(&k, &["registries", "--format", "json"]).json();
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["host"] == host)
        .unwrap();
    assert_eq!(entry["username"], "kilnuser");
    assert_eq!(entry["in_use"], true);
    assert_eq!(
        entry["source"],
        format!("kiln login ({})", auth_json(&k).display())
    );
    assert_eq!(
        entry.as_object().unwrap().len(),
        4,
        "host, username, source, in_use and nothing else: {entry}"
    );

    let out = kiln(&k, &["logout", host]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let listed = kiln(&k, &["registries", "--format", "json"]).json();
    assert_eq!(listed, serde_json::json!([]));
    let denied = kiln(
        &k,
        &["pull", "--insecure", "--policy", "always", &reference],
    );
    assert_credentials_required(&denied);
    denied.assert_one_error();

    let again = kiln(&k, &["logout", host]);
    assert_eq!(again.status, 1);
    again.assert_one_error();
    assert!(
        again.stderr.contains(&format!("not logged in to {host}")),
        "{}",
        again.stderr
    );
    assert!(again.stderr.contains("hint:"), "{}", again.stderr);
    assert_no_leaks(&k, &[&env.auth_password, WRONG]);
}

trait FailsRef {
    fn fails_ref(&self, code: i32);
}

impl FailsRef for Run {
    fn fails_ref(&self, code: i32) {
        assert_eq!(
            self.status, code,
            "expected exit {code}:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
    }
}

#[test]
fn group_readable_auth_json_is_refused() {
    let env = env();
    let k = Kiln::new();
    let host = env.auth_registry.as_str();
    login(
        &k,
        host,
        &env.auth_user,
        &env.auth_password,
        &["--insecure"],
    )
    .ok();
    std::fs::set_permissions(auth_json(&k), std::fs::Permissions::from_mode(0o640)).unwrap();
    let hint = format!("hint: chmod 600 {}", auth_json(&k).display());
    let reference = format!("{host}/busybox:1");
    for args in [
        vec!["pull", "--insecure", "--policy", "always", &reference],
        vec!["registries"],
        vec!["logout", host],
    ] {
        let run = kiln(&k, &args);
        assert_eq!(run.status, 1, "{args:?}: {}", run.stderr);
        run.assert_one_error();
        assert!(
            run.stderr.contains("can be read by group or others"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains(&hint), "{args:?}: {}", run.stderr);
    }
    std::fs::set_permissions(auth_json(&k), std::fs::Permissions::from_mode(0o600)).unwrap();
    kiln(&k, &["pull", "--insecure", &format!("{host}/busybox:1")]).ok();
    assert_no_leaks(&k, &[&env.auth_password]);
}

#[test]
fn token_auth_login_and_pull() {
    let env = env();
    let host = env.token_registry.as_str();
    let reference = format!("{host}/busybox:1");

    let anonymous = Kiln::new();
    let denied = kiln(&anonymous, &["pull", "--insecure", &reference]);
    assert_credentials_required(&denied);

    let k = Kiln::new();
    let refused = login(&k, host, &env.auth_user, WRONG, &["--insecure"]);
    refused.fails_ref(1);
    refused.assert_one_error();
    assert!(
        refused.stderr.contains("refused the login"),
        "{}",
        refused.stderr
    );
    assert!(!auth_json(&k).exists());

    login(
        &k,
        host,
        &env.auth_user,
        &env.auth_password,
        &["--insecure"],
    )
    .ok();
    let pulled = kiln(&k, &["pull", "--insecure", &reference]);
    assert_eq!(pulled.status, 0, "{}", pulled.stderr);
    let digest = pulled.stdout.trim().to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");

    // A wrong password given to the call wins over the stored one, and is refused.
    let creds = format!("{}:{WRONG}", env.auth_user);
    let run = kiln(
        &k,
        &[
            "pull",
            "--insecure",
            "--policy",
            "always",
            "--creds",
            &creds,
            &reference,
        ],
    );
    assert_eq!(run.status, 1, "{}", run.stderr);
    assert!(run.stderr.contains("credentials refused"), "{}", run.stderr);
    assert_no_leaks(&k, &[&env.auth_password, WRONG]);
}

#[test]
fn tls_login_with_a_private_ca() {
    let env = env();
    let k = Kiln::new();
    let host = env.tls_registry.as_str();
    let untrusted = login(&k, host, &env.auth_user, &env.auth_password, &[]);
    untrusted.fails_ref(1);
    untrusted.assert_one_error();
    assert!(
        untrusted.stderr.contains("--ca-certs"),
        "{}",
        untrusted.stderr
    );
    assert!(!auth_json(&k).exists());
    let ca = env.ca.display().to_string();
    let ok = login(
        &k,
        host,
        &env.auth_user,
        &env.auth_password,
        &["--ca-certs", &ca],
    );
    assert_eq!(ok.status, 0, "{}", ok.stderr);
    assert_eq!(ok.stdout.trim(), "Login Succeeded");
    // This registry asks for no credentials: they are kept, with a warning.
    assert!(
        ok.stderr.contains("asks for no credentials"),
        "{}",
        ok.stderr
    );
    kiln(
        &k,
        &["pull", "--ca-certs", &ca, &format!("{host}/busybox:1")],
    )
    .ok();
    assert_no_leaks(&k, &[&env.auth_password]);
}

#[test]
fn login_needs_a_password_source() {
    let env = env();
    let k = Kiln::new();
    let run = kiln(
        &k,
        &["login", &env.auth_registry, "-u", "kilnuser", "--insecure"],
    );
    assert_eq!(run.status, 1);
    run.assert_one_error();
    assert!(run.stderr.contains("--password-stdin"), "{}", run.stderr);
    let run = kiln_with(
        &k,
        &["login", &env.auth_registry, "--password-stdin"],
        Some("x\n"),
        &[],
    );
    assert_eq!(run.status, 1);
    assert!(run.stderr.contains("-u USER"), "{}", run.stderr);
    let run = kiln(
        &k,
        &[
            "pull",
            "--creds",
            WRONG,
            &format!("{}/busybox:1", env.auth_registry),
        ],
    );
    assert_eq!(run.status, 1);
    assert!(run.stderr.contains("USER:PASSWORD"), "{}", run.stderr);
    assert_no_leaks(&k, &[WRONG]);
}

/// The levels of the resolution order, highest first.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Level {
    Call,
    KilnLogin,
    ConfigEnv,
    ConfigFile,
    Docker,
}

/// A store where `levels` hold credentials for the auth registry (each with
/// the right or the wrong password); returns the extra pull arguments and
/// environment.
fn setup_levels(
    k: &Kiln,
    env: &Env,
    levels: &[(Level, bool)],
) -> (Vec<String>, Vec<(String, String)>) {
    let host = &env.auth_registry;
    let mut args = Vec::new();
    let mut vars = Vec::new();
    let password = |right: bool| {
        if right {
            env.auth_password.clone()
        } else {
            WRONG.to_string()
        }
    };
    for &(level, right) in levels {
        match level {
            Level::Call => {
                args.push("--creds".to_string());
                args.push(format!("{}:{}", env.auth_user, password(right)));
            }
            Level::KilnLogin if right => {
                login(k, host, &env.auth_user, &env.auth_password, &["--insecure"]).ok();
            }
            Level::KilnLogin => {
                // kiln login refuses wrong passwords: write the entry as a
                // stale login would have left it.
                let text = serde_json::json!({"version": 1, "registries": {host: {
                    "username": env.auth_user, "store": "file", "password": WRONG}}});
                let path = auth_json(k);
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .unwrap();
                file.write_all(text.to_string().as_bytes()).unwrap();
            }
            Level::ConfigEnv => {
                std::fs::write(
                    k.config_path(),
                    format!(
                        "version = 1\n[registries.\"{host}\"]\nusername = \"{}\"\npassword_env = \"KILN_TEST_REGISTRY_PASSWORD\"\n",
                        env.auth_user
                    ),
                )
                .unwrap();
                vars.push(("KILN_TEST_REGISTRY_PASSWORD".to_string(), password(right)));
            }
            Level::ConfigFile => {
                let secret = k.dir.path().join("registry-password");
                std::fs::write(&secret, format!("{}\n", password(right))).unwrap();
                std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
                std::fs::write(
                    k.config_path(),
                    format!(
                        "version = 1\n[registries.\"http://{host}/\"]\nusername = \"{}\"\npassword_file = \"registry-password\"\n",
                        env.auth_user
                    ),
                )
                .unwrap();
            }
            Level::Docker => k.docker_login(host, &env.auth_user, &password(right)),
        }
    }
    (args, vars)
}

fn pull_with_levels(env: &Env, levels: &[(Level, bool)]) -> (Kiln, Run) {
    let k = Kiln::new();
    let (extra, vars) = setup_levels(&k, env, levels);
    let reference = format!("{}/busybox:1", env.auth_registry);
    let mut args: Vec<&str> = vec!["pull", "--insecure"];
    args.extend(extra.iter().map(String::as_str));
    args.push(&reference);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let run = kiln_with(&k, &args, None, &vars);
    (k, run)
}

#[test]
fn resolution_order_highest_level_with_credentials_wins() {
    use Level::*;
    let env = env();
    // (higher, lower): the higher level is asked first.
    let pairs = [
        (Call, KilnLogin),
        (KilnLogin, ConfigEnv),
        (KilnLogin, ConfigFile),
        (ConfigEnv, Docker),
        (ConfigFile, Docker),
        (Call, Docker),
    ];
    for (higher, lower) in pairs {
        let (k, run) = pull_with_levels(&env, &[(higher, true), (lower, false)]);
        assert_eq!(
            run.status, 0,
            "right at {higher:?} + wrong at {lower:?} must pull: {}",
            run.stderr
        );
        assert_no_leaks(&k, &[&env.auth_password, WRONG]);
        let (k, run) = pull_with_levels(&env, &[(higher, false), (lower, true)]);
        assert_eq!(
            run.status, 1,
            "wrong at {higher:?} + right at {lower:?} must fail: {}",
            run.stderr
        );
        assert!(run.stderr.contains("(401)"), "{}", run.stderr);
        assert_no_leaks(&k, &[&env.auth_password, WRONG]);
    }
    for level in [Call, KilnLogin, ConfigEnv, ConfigFile, Docker] {
        let (_, run) = pull_with_levels(&env, &[(level, true)]);
        assert_eq!(run.status, 0, "right at {level:?} alone: {}", run.stderr);
    }
    let (_, run) = pull_with_levels(&env, &[]);
    assert_credentials_required(&run);
    run.assert_one_error();
}

#[test]
fn config_credentials_errors_name_the_problem() {
    let env = env();
    let host = &env.auth_registry;
    let reference = format!("{host}/busybox:1");

    // password_env names a variable that is not set.
    let k = Kiln::new();
    setup_levels(&k, &env, &[(Level::ConfigEnv, true)]);
    let run = kiln(&k, &["pull", "--insecure", &reference]);
    assert_eq!(run.status, 1);
    run.assert_one_error();
    assert!(
        run.stderr
            .contains("KILN_TEST_REGISTRY_PASSWORD is not set"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("hint: export KILN_TEST_REGISTRY_PASSWORD="),
        "{}",
        run.stderr
    );

    // password_file that others can read.
    let k = Kiln::new();
    setup_levels(&k, &env, &[(Level::ConfigFile, true)]);
    let secret = k.dir.path().join("registry-password");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = kiln(&k, &["pull", "--insecure", &reference]);
    assert_eq!(run.status, 1);
    run.assert_one_error();
    assert!(
        run.stderr
            .contains(&format!("hint: chmod 600 {}", secret.display())),
        "{}",
        run.stderr
    );

    // Unknown keys are refused like the rest of the config file.
    let k = Kiln::new();
    std::fs::write(
        k.config_path(),
        format!("version = 1\n[registries.\"{host}\"]\nusername = \"u\"\npassword = \"{WRONG}\"\n"),
    )
    .unwrap();
    let run = kiln(&k, &["registries"]);
    assert_eq!(run.status, 1);
    assert!(
        run.stderr.contains("unknown field `password`"),
        "{}",
        run.stderr
    );

    // registries shows where each host's credentials come from, in order.
    let k = Kiln::new();
    setup_levels(
        &k,
        &env,
        &[
            (Level::KilnLogin, true),
            (Level::ConfigEnv, true),
            (Level::Docker, true),
        ],
    );
    let listed = kiln(&k, &["registries", "--format", "json"]).json();
    let sources: Vec<(String, bool)> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["host"] == host.as_str())
        .map(|e| {
            (
                e["source"].as_str().unwrap().to_string(),
                e["in_use"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sources,
        vec![
            (format!("kiln login ({})", auth_json(&k).display()), true),
            (
                "config password_env KILN_TEST_REGISTRY_PASSWORD".to_string(),
                false
            ),
            ("docker config.json".to_string(), false),
        ]
    );
    assert_no_leaks(&k, &[&env.auth_password, WRONG]);
}

/// No recorded output holds a secret; no file of the store does; the
/// config directory holds them only where the user or kiln login put them.
fn assert_no_leaks(k: &Kiln, secrets: &[&str]) {
    for secret in secrets {
        for (args, output) in OUTPUTS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            assert!(
                !output.contains(secret),
                "`kiln {args}` printed a secret:\n{output}"
            );
        }
        let in_store = files_containing(&k.root(), secret);
        assert!(in_store.is_empty(), "secret in the store: {in_store:?}");
        let allowed = [auth_json(k), k.dir.path().join("registry-password")];
        for file in files_containing(k.dir.path(), secret) {
            assert!(allowed.contains(&file), "secret in {}", file.display());
        }
    }
}

/// The keyring store for real: gnome-keyring's Secret Service on a private
/// session D-Bus (`dbus-run-session`), as on a desktop.
#[test]
fn keyring_store_with_gnome_keyring() {
    let env = env();
    let k = Kiln::new();
    let host = env.auth_registry.as_str();
    let home = k.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let bin = env!("CARGO_BIN_EXE_kiln");
    // Every kiln command of the session, its output between markers.
    let script = format!(
        r#"set -u
export HOME={home} XDG_DATA_HOME={home}/.local/share KILN_CREDENTIAL_STORE=keyring
echo keyring-unlock | gnome-keyring-daemon --unlock --components=secrets >/dev/null || exit 90
k() {{ echo "== kiln $*"; "{bin}" --root {root} "$@" 2>&1; echo "== exit $?"; }}
printf '%s\n' "$KILN_TEST_PASSWORD" | k login {host} -u {user} --password-stdin --insecure
echo "== auth.json: $(tr -d ' \n' <{auth})"
k registries
k pull --insecure {host}/busybox:1
k logout {host}
k pull --insecure --policy always {host}/busybox:1
"#,
        home = home.display(),
        root = k.root().display(),
        user = env.auth_user,
        auth = auth_json(&k).display(),
    );
    let output = std::process::Command::new("dbus-run-session")
        .args(["--", "bash", "-c", &script])
        .env("KILN_CONFIG", k.config_path())
        .env("DOCKER_CONFIG", k.docker_config())
        .env("KILN_TEST_PASSWORD", &env.auth_password)
        .env("NO_COLOR", "1")
        .env_remove("KILN_ROOT")
        .stdin(Stdio::null())
        .output()
        .expect("dbus-run-session is installed (.ci/run installs dbus-daemon and gnome-keyring)");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    record(
        &["(keyring session)"],
        &Run {
            status: 0,
            stdout: text.clone(),
            stderr: String::from_utf8_lossy(&output.stderr).to_string(),
        },
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let exits: Vec<&str> = text.lines().filter(|l| l.starts_with("== exit")).collect();
    assert_eq!(
        exits,
        [
            "== exit 0",
            "== exit 0",
            "== exit 0",
            "== exit 0",
            "== exit 1"
        ],
        "{text}"
    );
    assert!(text.contains("stored in kiln login (keyring)"), "{text}");
    assert!(text.contains("Login Succeeded"), "{text}");
    assert!(text.contains("kiln login (keyring)"), "{text}");
    assert!(text.contains("(401)"), "after logout: {text}");
    // auth.json named the entry but held no password.
    assert!(
        text.contains(&format!(
            r#"== auth.json: {{"version":1,"registries":{{"{host}":{{"username":"kilnuser","store":"keyring"}}}}}}"#
        )),
        "{text}"
    );
    assert_no_leaks(&k, &[&env.auth_password]);
    assert!(files_containing(k.dir.path(), &env.auth_password).is_empty());

    // Forcing the keyring where there is none is an error with a hint.
    let run = kiln_with(
        &k,
        &[
            "login",
            host,
            "-u",
            &env.auth_user,
            "--password-stdin",
            "--insecure",
            "--credential-store",
            "keyring",
        ],
        Some(&format!("{}\n", env.auth_password)),
        &[("DBUS_SESSION_BUS_ADDRESS", "")],
    );
    assert_eq!(run.status, 1, "{}", run.stderr);
    run.assert_one_error();
    assert!(
        run.stderr.contains("no keyring is available"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("KILN_CREDENTIAL_STORE=file"),
        "{}",
        run.stderr
    );
}
