//! `login`, `logout`, `registries`, and `--creds` for pull.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use kiln::{
    Credential, CredentialProvider, LoginOptions, Manager, Reference, StaticCredentials,
    StoreChoice,
};

use crate::cli::{CredentialStoreArg, Format, LoginArgs};
use crate::printer;

pub fn login(manager: &Manager, args: LoginArgs) -> anyhow::Result<ExitCode> {
    let terminal = std::io::stdin().is_terminal();
    let username = match args.username {
        Some(username) => username,
        None if terminal && !args.password_stdin => prompt_line("Username: ")?,
        None => bail!(
            "no user name: pass -u USER (kiln asks for one only on a terminal, and not with --password-stdin)"
        ),
    };
    let password = if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        line.strip_suffix('\r').unwrap_or(line).to_string()
    } else if terminal {
        rpassword::prompt_password("Password: ").context("cannot read the password")?
    } else {
        bail!(
            "no password: standard input is not a terminal; pass --password-stdin and write the password to standard input"
        );
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    let options = LoginOptions {
        insecure: args.registry.insecure,
        ca_certs: args.registry.ca_certs,
        store: match args.credential_store {
            CredentialStoreArg::Auto => StoreChoice::Auto,
            CredentialStoreArg::File => StoreChoice::File,
            CredentialStoreArg::Keyring => StoreChoice::Keyring,
        },
    };
    let outcome =
        super::runtime()?.block_on(manager.login(&args.host, &username, &password, &options))?;
    if !outcome.verified {
        printer::status(format!(
            "warning: {} asks for no credentials; they were stored without a check",
            outcome.host
        ));
    }
    if let Some(reason) = &outcome.keyring_fallback {
        printer::status(format!(
            "warning: no keyring ({reason}): the password is kept in a file only you can read (mode 0600)"
        ));
    }
    printer::status(format!(
        "credentials for {} ({}) stored in {}",
        outcome.host, outcome.username, outcome.source
    ));
    printer::out("Login Succeeded")?;
    Ok(ExitCode::SUCCESS)
}

pub fn logout(manager: &Manager, host: &str) -> anyhow::Result<ExitCode> {
    if !manager.logout(host)? {
        return Err(manager.not_logged_in(host).into());
    }
    printer::status(format!(
        "removed credentials for {}",
        kiln::normalize_host(host)
    ));
    Ok(ExitCode::SUCCESS)
}

pub fn registries(manager: &Manager, format: Format) -> anyhow::Result<ExitCode> {
    let registries = manager.registries()?;
    if format == Format::Json {
        printer::json(&registries)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = registries
        .into_iter()
        .map(|r| {
            vec![
                r.host,
                r.username.unwrap_or_else(|| "-".into()),
                if r.in_use { "yes" } else { "no (shadowed)" }.into(),
                r.source,
            ]
        })
        .collect();
    printer::table(&["HOST", "USERNAME", "IN USE", "SOURCE"], &rows)?;
    Ok(ExitCode::SUCCESS)
}

/// `--creds USER:PASSWORD` as credentials for the reference's registry.
/// The value never appears in an error.
pub fn call_credentials(
    reference: &str,
    creds: Option<&str>,
) -> anyhow::Result<Option<Arc<dyn CredentialProvider>>> {
    let Some(creds) = creds else {
        return Ok(None);
    };
    let Some((username, password)) = creds
        .split_once(':')
        .filter(|(u, p)| !u.is_empty() && !p.is_empty())
    else {
        bail!("--creds takes USER:PASSWORD (both non-empty)");
    };
    let Ok(reference) = reference.parse::<Reference>() else {
        // Not an OCI reference (SOURCE://NAME): pull reports it.
        return Ok(None);
    };
    let credential = Credential::Basic {
        username: username.to_string(),
        password: password.to_string(),
    };
    let map = HashMap::from([(reference.registry().to_string(), credential)]);
    Ok(Some(Arc::new(StaticCredentials(map))))
}

fn prompt_line(prompt: &str) -> anyhow::Result<String> {
    let mut stderr = std::io::stderr().lock();
    write!(stderr, "{prompt}")?;
    stderr.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_string())
}
