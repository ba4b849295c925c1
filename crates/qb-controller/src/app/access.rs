//! Who may do what: users and their passwords, API tokens, the tokens kubeconfigs carry, and
//! web sessions. A token minted at a caller's request never outlives the caller's own.

use qb_api::{
    ClusterId, CreateKubeconfig, CreateToken, CreateUser, CreatedToken, Description, Kubeconfig,
    Name, Page, PageParams, ProblemCode, Role, TenantId, Token, TokenId, User,
};
use qb_store::{Actor, Key, Store, StoreError};
use time::OffsetDateTime;

use super::{AppState, hours_from_now, within};
use crate::auth::{Caller, hash_secret, unauthenticated};
use crate::{ApiError, auth, kubeconfig, passwords};

/// Makes a new API token for `user` that expires in `hours`, returning its secret once.
pub async fn mint_token(
    store: &Store,
    tenant: TenantId,
    user: &Name,
    description: Option<Description>,
    hours: u32,
    actor: &Actor,
) -> Result<CreatedToken, StoreError> {
    mint_token_until(
        store,
        tenant,
        user,
        description,
        hours_from_now(hours),
        actor,
    )
    .await
}

async fn mint_token_until(
    store: &Store,
    tenant: TenantId,
    user: &Name,
    description: Option<Description>,
    expires_at: OffsetDateTime,
    actor: &Actor,
) -> Result<CreatedToken, StoreError> {
    let (secret, hash) = auth::new_secret();
    store
        .create_token(tenant, user, secret, &hash, description, expires_at, actor)
        .await
}

/// How a web session is asked for.
pub enum SessionLogin {
    /// With an API token (of a token's form): the session is its user's, no longer than it.
    Token(String),
    /// With a user's password.
    Password {
        tenant: Name,
        user: Name,
        password: String,
    },
}

/// A web session just opened: the secret of its token, shown once, and whose it is.
pub struct OpenedSession {
    pub secret: String,
    pub tenant: Name,
    pub user: Name,
    pub role: Role,
    pub expires_at: OffsetDateTime,
}

impl AppState {
    pub async fn list_users(&self, caller: &Caller) -> Result<Vec<User>, StoreError> {
        self.store.list_users(caller.tenant()).await
    }

    pub async fn create_user(&self, caller: &Caller, req: &CreateUser) -> Result<User, StoreError> {
        self.store
            .create_user(caller.tenant(), &req.name, req.role, &caller.actor())
            .await
    }

    /// Sets `user`'s password, ending the user's web sessions but the caller's own when the
    /// caller changes their own password; their API tokens stay.
    pub async fn set_password(
        &self,
        caller: &Caller,
        user: &Name,
        password: String,
    ) -> Result<User, ApiError> {
        passwords::validate(&password)?;
        let hash = tokio::task::spawn_blocking(move || passwords::hash(&password))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "hashing a password failed");
                ApiError::new(
                    ProblemCode::Internal,
                    "internal error; see the controller's log",
                )
            })?;
        let keep = (*user == caller.0.user).then_some(caller.0.token_id);
        Ok(self
            .store
            .set_password(caller.tenant(), user, &hash, keep, &caller.actor())
            .await?)
    }

    pub async fn list_tokens(
        &self,
        caller: &Caller,
        page: &PageParams,
    ) -> Result<Page<Token>, ApiError> {
        Ok(self
            .store
            .list_tokens(caller.tenant(), page.after.as_deref(), page.limit()?)
            .await?)
    }

    /// A new API token, for the user the request names or else the caller's own.
    pub async fn create_token(
        &self,
        caller: &Caller,
        req: CreateToken,
    ) -> Result<CreatedToken, ApiError> {
        let hours = within(
            "expires_in_hours",
            req.expires_in_hours,
            CreateToken::DEFAULT_HOURS,
            CreateToken::MAX_HOURS,
        )?;
        let user = req.user.unwrap_or_else(|| caller.0.user.clone());
        Ok(mint_token(
            &self.store,
            caller.tenant(),
            &user,
            req.description,
            hours,
            &caller.actor(),
        )
        .await?)
    }

    pub async fn revoke_token(&self, caller: &Caller, id: TokenId) -> Result<Token, StoreError> {
        self.store
            .revoke_token(caller.tenant(), id, &caller.actor())
            .await
    }

    /// A kubeconfig for the cluster through the controller's Kubernetes API proxy, with a new
    /// token of the caller's own user that expires no later than the caller's token: a
    /// short-lived token cannot mint a long one.
    pub async fn create_kubeconfig(
        &self,
        caller: &Caller,
        cluster: &Key<ClusterId>,
        req: &CreateKubeconfig,
    ) -> Result<Kubeconfig, ApiError> {
        let hours = within(
            "expires_in_hours",
            req.expires_in_hours,
            CreateKubeconfig::DEFAULT_HOURS,
            CreateKubeconfig::MAX_HOURS,
        )?;
        let public = self.public.clone().ok_or_else(|| {
            ApiError::new(
                ProblemCode::Unavailable,
                "this controller does not know the URL users reach it at, so it writes no kubeconfigs",
            )
        })?;
        // The proxy serves clusters by name, whether the caller gave the name or the id.
        let cluster = self
            .store
            .get_cluster(caller.tenant(), cluster)
            .await?
            .cluster;
        let description =
            Description::try_from(format!("kubeconfig for cluster {}", cluster.name))?;
        let expires_at = hours_from_now(hours).min(caller.0.token_expires_at);
        let created = mint_token_until(
            &self.store,
            caller.tenant(),
            &caller.0.user,
            Some(description),
            expires_at,
            &caller.actor(),
        )
        .await?;
        let kubeconfig =
            kubeconfig::render(&public, &cluster.name, &created.token.user, &created.secret);
        Ok(Kubeconfig {
            kubeconfig,
            token: created.token,
        })
    }

    /// Opens a web session: a new token of the user, at most [`crate::session::MAX_HOURS`]
    /// long and never longer than a token that opens it. Password logins are throttled per
    /// user.
    pub async fn open_session(&self, login: SessionLogin) -> Result<OpenedSession, ApiError> {
        let (tenant_id, tenant, user, role, expires_at) = match login {
            SessionLogin::Token(token) => {
                let caller = Caller::authenticate(self, &hash_secret(&token)).await?.0;
                let expires_at = session_end().min(caller.token_expires_at);
                (
                    caller.tenant_id,
                    caller.tenant,
                    caller.user,
                    caller.role,
                    expires_at,
                )
            }
            SessionLogin::Password {
                tenant,
                user,
                password,
            } => {
                self.logins.admit(tenant.as_str(), user.as_str())?;
                let found = self.store.password_user(&tenant, &user).await?;
                let stored = found.as_ref().map(|f| f.password_hash.clone());
                let matched = passwords::check(password, stored).await;
                let Some(found) = found.filter(|_| matched) else {
                    self.logins.failed(tenant.as_str(), user.as_str());
                    tracing::info!(tenant = %tenant, user = %user, "a password login failed");
                    return Err(unauthenticated("wrong tenant, user or password"));
                };
                self.logins.succeeded(tenant.as_str(), user.as_str());
                (
                    found.tenant_id,
                    tenant,
                    found.user.name,
                    found.user.role,
                    session_end(),
                )
            }
        };
        let (secret, hash) = auth::new_secret();
        let created = self
            .store
            .create_session_token(
                tenant_id,
                &user,
                secret,
                &hash,
                expires_at,
                &Actor::user(user.as_str()),
            )
            .await?;
        Ok(OpenedSession {
            secret: created.secret,
            tenant,
            user,
            role,
            expires_at,
        })
    }

    /// Ends the web session whose token is `secret`, if it is still open.
    pub async fn end_session(&self, secret: &str) -> Result<(), StoreError> {
        if let Some(principal) = self.store.authenticate(&hash_secret(secret)).await? {
            let (tenant, token) = (principal.tenant_id, principal.token_id);
            let actor = Caller(principal).actor();
            self.store.revoke_token(tenant, token, &actor).await?;
        }
        Ok(())
    }
}

/// When a session opened now ends at the latest.
fn session_end() -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::hours(crate::session::MAX_HOURS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::fixture::Fixture;

    fn kubeconfig_for(hours: Option<u32>) -> CreateKubeconfig {
        serde_json::from_value(serde_json::json!({ "expires_in_hours": hours })).unwrap()
    }

    #[tokio::test]
    async fn a_kubeconfig_token_never_outlives_the_token_that_asks() {
        let f = Fixture::new().await;
        let prod = f.cluster("prod").await;
        let short = f.operator_for(1).await;
        let by_id = Key::Id(prod.id);
        let made = f
            .app
            .create_kubeconfig(&short, &by_id, &kubeconfig_for(Some(48)))
            .await
            .unwrap();
        assert_eq!(made.token.expires_at, short.0.token_expires_at);
        assert_eq!(made.token.user, short.0.user);
        assert!(
            made.kubeconfig
                .contains("server: \"https://qb.example.net/k8s/clusters/prod\""),
            "served by name though asked by id:\n{}",
            made.kubeconfig
        );

        let long = f.operator_for(720).await;
        let made = f
            .app
            .create_kubeconfig(&long, &by_id, &kubeconfig_for(Some(2)))
            .await
            .unwrap();
        let asked = hours_from_now(2);
        assert!(made.token.expires_at <= asked, "{}", made.token.expires_at);
        assert!(made.token.expires_at > asked - time::Duration::minutes(1));
    }

    #[tokio::test]
    async fn kubeconfig_lifetimes_are_bounded_and_need_the_public_url() {
        let mut f = Fixture::new().await;
        let prod = Key::Name(f.cluster("prod").await.name.to_string());
        for hours in [0, 8761] {
            let refused = f
                .app
                .create_kubeconfig(&f.operator, &prod, &kubeconfig_for(Some(hours)))
                .await
                .unwrap_err();
            assert_eq!(
                refused.0.detail,
                "expires_in_hours must be between 1 and 8760"
            );
        }
        f.app.public = None;
        let refused = f
            .app
            .create_kubeconfig(&f.operator, &prod, &kubeconfig_for(None))
            .await
            .unwrap_err();
        assert_eq!(refused.0.code, ProblemCode::Unavailable);
    }

    #[tokio::test]
    async fn tokens_are_the_callers_unless_named_and_their_lifetime_is_bounded() {
        let f = Fixture::new().await;
        let request = |user: Option<&str>, hours: Option<u32>| CreateToken {
            user: user.map(|u| u.parse().unwrap()),
            description: None,
            expires_in_hours: hours,
        };
        let own = f
            .app
            .create_token(&f.admin, request(None, None))
            .await
            .unwrap();
        assert_eq!(own.token.user, f.admin.0.user);
        let asked = hours_from_now(CreateToken::DEFAULT_HOURS);
        assert!(own.token.expires_at <= asked);
        assert!(own.token.expires_at > asked - time::Duration::minutes(1));
        let named = f
            .app
            .create_token(&f.admin, request(Some("op"), Some(1)))
            .await
            .unwrap();
        assert_eq!(named.token.user.as_str(), "op");
        for hours in [0, 8761] {
            let refused = f
                .app
                .create_token(&f.admin, request(None, Some(hours)))
                .await
                .unwrap_err();
            assert_eq!(
                refused.0.detail,
                "expires_in_hours must be between 1 and 8760"
            );
        }
    }

    #[tokio::test]
    async fn a_session_never_outlives_its_token_and_ends_when_asked() {
        let f = Fixture::new().await;
        let created = mint_token(
            &f.store,
            f.tenant,
            &f.operator.0.user,
            None,
            1,
            &Actor::controller(),
        )
        .await
        .unwrap();
        let opened = f
            .app
            .open_session(SessionLogin::Token(created.secret.clone()))
            .await
            .unwrap();
        assert_eq!(opened.expires_at, created.token.expires_at);
        assert_eq!(opened.role, Role::Operator);
        let session = hash_secret(&opened.secret);
        assert!(f.store.authenticate(&session).await.unwrap().is_some());
        f.app.end_session(&opened.secret).await.unwrap();
        assert!(f.store.authenticate(&session).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_password_change_keeps_only_the_changers_own_session() {
        let f = Fixture::new().await;
        let refused = f
            .app
            .set_password(&f.operator, &f.operator.0.user, "short".to_owned())
            .await
            .unwrap_err();
        assert_eq!(refused.0.code, ProblemCode::InvalidInput);
        let password = "correct horse battery".to_owned();
        f.app
            .set_password(&f.operator, &f.operator.0.user, password.clone())
            .await
            .unwrap();
        let login = || SessionLogin::Password {
            tenant: f.admin.0.tenant.clone(),
            user: f.operator.0.user.clone(),
            password: password.clone(),
        };
        let first = f.app.open_session(login()).await.unwrap();
        let second = f.app.open_session(login()).await.unwrap();
        let changer = Caller(
            f.store
                .authenticate(&hash_secret(&second.secret))
                .await
                .unwrap()
                .unwrap(),
        );
        f.app
            .set_password(&changer, &changer.0.user, password.clone())
            .await
            .unwrap();
        let first = f.store.authenticate(&hash_secret(&first.secret)).await;
        assert!(first.unwrap().is_none(), "other sessions end");
        let second = f.store.authenticate(&hash_secret(&second.secret)).await;
        assert!(second.unwrap().is_some(), "the changer's own stays");
    }
}
