//! `qb login` and `qb whoami`.

use std::io::{BufRead, IsTerminal, Read, Write};

use anyhow::{Context as _, bail};
use qb_api::Whoami;
use qb_api::endpoints;

use super::App;
use crate::cli::LoginArgs;
use crate::client::{ApiError, Client, parse_server};
use crate::config::{Context, DEFAULT_CONTEXT};
use crate::output;
use crate::tls::{Fingerprint, Trust};

pub async fn login(app: &mut App, args: LoginArgs) -> anyhow::Result<()> {
    let name = app
        .context
        .clone()
        .unwrap_or_else(|| DEFAULT_CONTEXT.to_owned());
    if name.trim().is_empty() {
        bail!("the context name must not be empty");
    }
    let url = parse_server(&args.url)?;
    let server = url.as_str().trim_end_matches('/').to_owned();
    let token = read_token(args.token.as_deref())?;

    let fingerprint = if url.scheme() == "https" {
        let expected = args
            .fingerprint
            .as_deref()
            .map(str::parse::<Fingerprint>)
            .transpose()?;
        let presented = probe(&server).await?;
        establish_trust(app, &server, presented, expected, args.yes)?;
        Some(presented)
    } else {
        if args.fingerprint.is_some() {
            bail!("--fingerprint applies to https:// controllers only");
        }
        None
    };

    let trust = fingerprint.map_or(Trust::Probe, Trust::Pinned);
    let client = Client::new(&server, trust, Some(token.clone()))?;
    let whoami = client.request(&endpoints::WHOAMI, &[], &[]);
    let who: Whoami = match client.call(whoami).await {
        Ok(who) => who,
        Err(ApiError::Unauthenticated { detail, .. }) => {
            bail!("the controller rejected the token: {detail}; nothing was saved")
        }
        Err(e) => return Err(e).context("cannot check the token"),
    };

    app.config.upsert(Context {
        name: name.clone(),
        server: server.clone(),
        token,
        fingerprint: fingerprint.map(|f| f.to_string()),
    });
    app.config.current_context = Some(name.clone());
    app.save_config()?;
    app.out.emit(&who, || {
        format!(
            "Logged in to {server} as {} ({}) in tenant {}.\nContext {name:?} is now current.",
            who.user,
            who.role.as_str(),
            who.tenant
        )
    })
}

/// The token from `--token`/`QB_TOKEN`, or from stdin for `--token -`.
fn read_token(arg: Option<&str>) -> anyhow::Result<String> {
    let token = match arg {
        None => bail!("give the token with --token TOKEN, --token - (read from stdin) or QB_TOKEN"),
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .lock()
                .take(64 * 1024)
                .read_to_string(&mut text)
                .context("cannot read the token from stdin")?;
            text.trim().to_owned()
        }
        Some(t) => t.trim().to_owned(),
    };
    if token.is_empty() {
        bail!("the token is empty");
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("the token must be one word without spaces or control characters");
    }
    Ok(token)
}

/// Connects without trusting anything and returns the fingerprint of the certificate presented.
/// The handshake is aborted before any request is sent.
async fn probe(server: &str) -> anyhow::Result<Fingerprint> {
    let client = Client::new(server, Trust::Probe, None)?;
    let result = client
        .call::<serde_json::Value>(client.request(&endpoints::WHOAMI, &[], &[]))
        .await;
    if let Some(seen) = client.verifier().seen() {
        return Ok(seen);
    }
    match result {
        Err(e) => Err(e.into()),
        Ok(_) => bail!("the controller at {server} answered without presenting a certificate"),
    }
}

/// Decides whether to trust `presented`: it must match `--fingerprint` if given; otherwise it is
/// trusted if a saved context already pins it for this server, with `--yes`, or when the user says so.
fn establish_trust(
    app: &App,
    server: &str,
    presented: Fingerprint,
    expected: Option<Fingerprint>,
    yes: bool,
) -> anyhow::Result<()> {
    if let Some(expected) = expected {
        if expected != presented {
            bail!(
                "the controller at {server} presented certificate {presented}, not the expected {expected}; \
                 nothing was saved. Someone may be intercepting the connection, or the fingerprint is not this controller's"
            );
        }
        return Ok(());
    }
    let known: Vec<&Context> = app
        .config
        .contexts
        .iter()
        .filter(|c| c.server == server)
        .collect();
    if known
        .iter()
        .any(|c| c.fingerprint.as_deref() == Some(presented.to_string().as_str()))
    {
        return Ok(());
    }
    let mut message = String::new();
    if let Some(previous) = known.iter().find(|c| c.fingerprint.is_some()) {
        message.push_str(&format!(
            "WARNING: the certificate of {server} changed since context {:?} pinned it.\n\
             Someone may be intercepting the connection. Continue only if the controller got a new certificate.\n",
            previous.name
        ));
    }
    message.push_str(&format!(
        "The controller at {server} presents a certificate with fingerprint\n    {presented}\n\
         Compare it with the one the controller printed at startup (\"certificate fingerprint ...\").\n"
    ));
    if yes {
        eprint!("{message}");
        eprintln!("Trusting it (--yes).");
        return Ok(());
    }
    match confirm(&format!("{message}Trust this controller? [y/N] "))? {
        Some(true) => Ok(()),
        Some(false) => bail!("certificate not trusted; nothing was saved"),
        None => bail!(
            "cannot ask whether to trust the certificate of {server} ({presented}) without a terminal; \
             check the fingerprint and pass --fingerprint {presented} (safest), or --yes"
        ),
    }
}

/// Asks a yes/no question on the terminal (not stdin, which may carry the token); `None` when not
/// run interactively: neither stdin nor stderr is a terminal (a script), or there is no terminal.
fn confirm(question: &str) -> anyhow::Result<Option<bool>> {
    if !std::io::stdin().is_terminal() && !std::io::stderr().is_terminal() {
        return Ok(None);
    }
    let answer = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    {
        Ok(tty) => {
            let mut writer = &tty;
            writer
                .write_all(question.as_bytes())
                .and_then(|()| writer.flush())?;
            let mut line = String::new();
            std::io::BufReader::new(&tty).read_line(&mut line)?;
            line
        }
        Err(_) if std::io::stdin().is_terminal() => {
            eprint!("{question}");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line
        }
        Err(_) => return Ok(None),
    };
    Ok(Some(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    )))
}

pub async fn whoami(app: &App) -> anyhow::Result<()> {
    let client = app.client()?;
    let who: Whoami = client
        .call(client.request(&endpoints::WHOAMI, &[], &[]))
        .await?;
    let ctx = app.config.resolve(app.context.as_deref())?;
    app.out
        .emit(&who, || output::whoami_fields(&who, &ctx.name, &ctx.server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_trimmed_and_checked() {
        assert_eq!(read_token(Some(" qb_abc \n")).expect("token"), "qb_abc");
        assert!(read_token(None).is_err());
        assert!(read_token(Some("  ")).is_err());
        assert!(read_token(Some("two words")).is_err());
    }
}
