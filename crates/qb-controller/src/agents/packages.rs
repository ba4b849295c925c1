//! Agent packages, built on request for the caller's tenant: the agent binary, its systemd unit,
//! and a configuration with this controller's agent URL, CA pin and a fresh bootstrap token.

use std::path::PathBuf;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use qb_api::{ProblemCode, Role};
use qb_package::{AgentPackage, Format};
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::extract::ApiQuery;
use crate::{ApiError, AppState};

/// What every package of this controller carries.
#[derive(Clone, Debug)]
pub struct Packaging {
    /// The agent endpoint's URL as hosts reach it.
    pub agent_url: String,
    /// Other replicas' agent endpoints, which agents try when `agent_url` does not answer.
    pub other_agent_urls: Vec<String>,
    pub ca_pin: qb_pki::Pin,
    /// The `qb-agent` executable to ship.
    pub agent_binary: PathBuf,
}

/// The version packages carry: the controller's own.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

impl Packaging {
    /// The agent binary to ship, once it is known to be packageable. Packages ship it as given:
    /// one that is not stripped (a debug build) carries its symbols and debug info to every
    /// host, so that is logged.
    pub(crate) async fn agent_binary(&self) -> Result<Vec<u8>, ApiError> {
        let binary = tokio::fs::read(&self.agent_binary).await.map_err(|e| {
            tracing::error!(path = %self.agent_binary.display(), error = %e, "cannot read the agent binary");
            ApiError::new(ProblemCode::Unavailable, "the agent binary is unavailable; see the controller's log")
        })?;
        // Checked before anything is made for the package (its bootstrap token): a binary that
        // cannot be packaged fails here.
        if !qb_package::is_stripped(&binary).map_err(package_error)? {
            tracing::warn!(path = %self.agent_binary.display(), "the agent binary is not stripped: packages ship its symbols and debug info to every host (`cargo xtask dist` builds it as it should ship)");
        }
        Ok(binary)
    }

    /// A package of `binary` in `format` whose agent registers with `bootstrap_token`.
    pub(crate) async fn build(
        &self,
        format: Format,
        binary: Vec<u8>,
        bootstrap_token: &str,
    ) -> Result<Vec<u8>, ApiError> {
        let config = toml::to_string(&AgentConfig {
            controller_url: &self.agent_url,
            other_controller_urls: &self.other_agent_urls,
            ca_pins: vec![self.ca_pin.to_string()],
            bootstrap_token,
        })
        .map_err(|e| {
            tracing::error!(error = %e, "cannot render the agent config");
            ApiError::new(
                ProblemCode::Internal,
                "internal error; see the controller's log",
            )
        })?;
        tokio::task::spawn_blocking(move || {
            format.build(&AgentPackage {
                version: VERSION,
                agent_binary: &binary,
                config_toml: &config,
            })
        })
        .await
        .map_err(|e| ApiError::new(ProblemCode::Internal, format!("packaging stopped: {e}")))?
        .map_err(package_error)
    }
}

/// The name of a package in `format`.
pub(crate) fn file_name(format: Format) -> Result<String, ApiError> {
    format.file_name(VERSION).map_err(package_error)
}

/// The configuration file an agent package installs.
#[derive(Serialize)]
struct AgentConfig<'a> {
    controller_url: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    other_controller_urls: &'a [String],
    ca_pins: Vec<String>,
    bootstrap_token: &'a str,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PackageQuery {
    /// How many hosts may register with the package's bootstrap token, 1 to 10000 (default 1).
    #[param(minimum = 1, maximum = 10000)]
    max_uses: Option<u32>,
    /// How long the package's bootstrap token is valid, in hours, 1 to 720 (default 24).
    #[param(minimum = 1, maximum = 720)]
    expires_in_hours: Option<u32>,
}

/// Download an agent package (`deb`, `rpm` or `tar.gz`) preconfigured for this tenant, with a
/// new bootstrap token inside.
#[utoipa::path(get, path = "/api/v1/agent-packages/{format}", tag = "agents",
    params(("format" = String, Path, description = "deb, rpm or tar.gz", pattern = "^(deb|rpm|tar\\.gz)$"), PackageQuery),
    responses(
        (status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, body = qb_api::Problem),
        (status = 503, body = qb_api::Problem)))]
pub(crate) async fn agent_package(
    State(app): State<AppState>,
    caller: Caller,
    Path(format): Path<String>,
    ApiQuery(q): ApiQuery<PackageQuery>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let format = Format::parse(&format).ok_or_else(|| {
        ApiError::new(
            ProblemCode::NotFound,
            format!("no package format {format:?}: use deb, rpm or tar.gz"),
        )
    })?;
    let package = app
        .agent_package(&caller, format, q.expires_in_hours, q.max_uses)
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", package.file_name),
            ),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        package.bytes,
    )
        .into_response())
}

/// An agent binary that cannot be packaged is this controller's configuration (`--agent-binary`),
/// as a missing one is; anything else is a fault.
fn package_error(e: qb_package::PackageError) -> ApiError {
    use qb_package::PackageError as E;
    tracing::error!(error = %e, "cannot build an agent package");
    let code = match e {
        E::EmptyBinary | E::NotElf | E::Elf(_) | E::WrongArch { .. } | E::UnknownLibrary(_) => {
            ProblemCode::Unavailable
        }
        _ => ProblemCode::Internal,
    };
    ApiError::new(
        code,
        "cannot build the agent package; see the controller's log",
    )
}
