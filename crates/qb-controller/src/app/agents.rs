//! Bringing hosts in: bootstrap tokens for agents to register with, and agent packages that
//! carry one.

use qb_api::{
    BootstrapToken, BootstrapTokenId, CreateBootstrapToken, CreatedBootstrapToken, Page,
    PageParams, ProblemCode,
};
use qb_package::Format;
use qb_store::StoreError;

use super::{AppState, hours_from_now, within};
use crate::ApiError;
use crate::agents::packages;
use crate::auth::{Caller, new_secret_with};

/// An agent package built for a tenant.
pub struct AgentPackageFile {
    pub file_name: String,
    pub bytes: Vec<u8>,
}

impl AppState {
    pub async fn list_bootstrap_tokens(
        &self,
        caller: &Caller,
        page: &PageParams,
    ) -> Result<Page<BootstrapToken>, ApiError> {
        Ok(self
            .store
            .list_bootstrap_tokens(caller.tenant(), page.after.as_deref(), page.limit()?)
            .await?)
    }

    /// A bootstrap token for agents to register hosts with, its secret returned once.
    pub async fn create_bootstrap_token(
        &self,
        caller: &Caller,
        req: CreateBootstrapToken,
    ) -> Result<CreatedBootstrapToken, ApiError> {
        let hours = within(
            "expires_in_hours",
            req.expires_in_hours,
            CreateBootstrapToken::DEFAULT_HOURS,
            CreateBootstrapToken::MAX_HOURS,
        )?;
        let uses = within(
            "max_uses",
            req.max_uses,
            CreateBootstrapToken::DEFAULT_USES,
            CreateBootstrapToken::MAX_USES,
        )?;
        let secret = new_secret_with(crate::agents::endpoint::BOOTSTRAP_TOKEN_PREFIX);
        Ok(self
            .store
            .create_bootstrap_token(
                caller.tenant(),
                secret,
                req.description,
                hours_from_now(hours),
                uses,
                &caller.actor(),
            )
            .await?)
    }

    /// Revokes a bootstrap token at once: hosts not yet registered with it can no longer use
    /// it.
    pub async fn revoke_bootstrap_token(
        &self,
        caller: &Caller,
        id: BootstrapTokenId,
    ) -> Result<BootstrapToken, StoreError> {
        self.store
            .revoke_bootstrap_token(caller.tenant(), id, &caller.actor())
            .await
    }

    /// An agent package in `format` for the caller's tenant, with a new bootstrap token inside
    /// (its lifetime and uses bounded as any bootstrap token's).
    pub async fn agent_package(
        &self,
        caller: &Caller,
        format: Format,
        expires_in_hours: Option<u32>,
        max_uses: Option<u32>,
    ) -> Result<AgentPackageFile, ApiError> {
        let packaging = self.packaging.clone().ok_or_else(|| {
            ApiError::new(
                ProblemCode::Unavailable,
                "this controller has no agent binary to package (see --agent-binary)",
            )
        })?;
        let binary = packaging.agent_binary().await?;
        let file_name = packages::file_name(format)?;
        let request = CreateBootstrapToken {
            description: Some(format!("agent package {file_name}").parse()?),
            expires_in_hours,
            max_uses,
        };
        let token = self.create_bootstrap_token(caller, request).await?;
        let bytes = packaging.build(format, binary, &token.secret).await?;
        tracing::info!(tenant_id = %caller.tenant(), package = %file_name, bootstrap_token = %token.token.id, "built an agent package");
        Ok(AgentPackageFile { file_name, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::fixture::Fixture;

    fn request(hours: Option<u32>, uses: Option<u32>) -> CreateBootstrapToken {
        CreateBootstrapToken {
            description: None,
            expires_in_hours: hours,
            max_uses: uses,
        }
    }

    #[tokio::test]
    async fn bootstrap_tokens_outside_their_bounds_are_refused_and_nothing_is_made() {
        let f = Fixture::new().await;
        for (hours, uses, message) in [
            (Some(0), None, "expires_in_hours must be between 1 and 720"),
            (
                Some(721),
                None,
                "expires_in_hours must be between 1 and 720",
            ),
            (None, Some(0), "max_uses must be between 1 and 10000"),
            (None, Some(10_001), "max_uses must be between 1 and 10000"),
        ] {
            let refused = f
                .app
                .create_bootstrap_token(&f.operator, request(hours, uses))
                .await
                .unwrap_err();
            assert_eq!(refused.0.code, ProblemCode::InvalidInput);
            assert_eq!(refused.0.detail, message);
        }
        let listed = f
            .app
            .list_bootstrap_tokens(&f.operator, &PageParams::default())
            .await
            .unwrap();
        assert!(listed.items.is_empty(), "{:?}", listed.items);
    }

    #[tokio::test]
    async fn a_bootstrap_token_registers_one_host_for_a_day_unless_asked_otherwise() {
        let f = Fixture::new().await;
        let made = f
            .app
            .create_bootstrap_token(&f.operator, request(None, None))
            .await
            .unwrap();
        assert!(
            made.secret
                .starts_with(crate::agents::endpoint::BOOTSTRAP_TOKEN_PREFIX)
        );
        assert_eq!(made.token.max_uses, CreateBootstrapToken::DEFAULT_USES);
        let day = hours_from_now(CreateBootstrapToken::DEFAULT_HOURS);
        assert!(made.token.expires_at <= day);
        assert!(made.token.expires_at > day - time::Duration::minutes(1));
        let revoked = f
            .app
            .revoke_bootstrap_token(&f.operator, made.token.id)
            .await
            .unwrap();
        assert!(revoked.revoked_at.is_some());
    }

    #[tokio::test]
    async fn no_package_without_an_agent_binary() {
        let f = Fixture::new().await;
        let refused = f
            .app
            .agent_package(&f.operator, Format::Tarball, None, None)
            .await
            .err()
            .unwrap();
        assert_eq!(refused.0.code, ProblemCode::Unavailable);
    }
}
