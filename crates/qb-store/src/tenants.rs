//! Tenants, users and API tokens.

use qb_api::{CreatedToken, Description, Name, Page, Role, TenantId, Token, TokenId, User, UserId};
use serde_json::json;
use sqlx::Row;
use time::OffsetDateTime;

use crate::events::NewEvent;
use crate::{Actor, Result, Store, StoreError, from_ms, is_unique_violation, now_ms, rows, to_ms};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub name: Name,
}

/// The identity behind a valid token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant_id: TenantId,
    pub tenant: Name,
    pub user_id: UserId,
    pub user: Name,
    pub role: Role,
    pub token_id: TokenId,
    /// When the token stops being valid.
    pub token_expires_at: OffsetDateTime,
}

/// A user who has a password, found by tenant and user name for a login.
#[derive(Clone, Debug)]
pub struct PasswordUser {
    pub tenant_id: TenantId,
    pub user: User,
    /// The stored hash (a PHC string); the password itself is never stored.
    pub password_hash: String,
}

impl Store {
    /// Creates a tenant with its first admin user.
    pub async fn create_tenant(&self, name: &Name, admin: &Name) -> Result<(Tenant, User)> {
        let tenant = Tenant {
            id: TenantId::new(),
            name: name.clone(),
        };
        let user = User {
            id: UserId::new(),
            name: admin.clone(),
            role: Role::Admin,
            created_at: from_ms(now_ms()),
        };
        let mut w = self.write_global().await?;
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(tenant.id.to_string())
            .bind(name.as_str())
            .bind(now_ms())
            .execute(&mut *w.tx)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::NameTaken {
                        kind: "tenant",
                        name: name.to_string(),
                    }
                } else {
                    e.into()
                }
            })?;
        insert_user(&mut w, tenant.id, &user).await?;
        let actor = Actor::controller();
        w.event(
            tenant.id,
            &actor,
            NewEvent {
                action: "tenant.created",
                object_kind: "tenant",
                object_id: tenant.id.to_string(),
                object_name: name.as_str(),
                detail: json!({}),
            },
        )
        .await?;
        w.commit_with_event(tenant.id, &actor, user_event("user.created", &user))
            .await?;
        Ok((tenant, user))
    }

    pub async fn tenant_by_name(&self, name: &str) -> Result<Tenant> {
        let row = sqlx::query("SELECT id, name FROM tenants WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("tenant", name))?;
        Ok(Tenant {
            id: crate::parse_id("tenant id", &row.try_get::<String, _>("id")?)?,
            name: name.parse()?,
        })
    }

    /// The number of tenants; zero on a fresh database.
    pub async fn tenant_count(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM tenants")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    pub async fn create_user(
        &self,
        tenant: TenantId,
        name: &Name,
        role: Role,
        actor: &Actor,
    ) -> Result<User> {
        let user = User {
            id: UserId::new(),
            name: name.clone(),
            role,
            created_at: from_ms(now_ms()),
        };
        let mut w = self.write(tenant).await?;
        insert_user(&mut w, tenant, &user).await?;
        w.commit_with_event(tenant, actor, user_event("user.created", &user))
            .await?;
        Ok(user)
    }

    pub async fn list_users(&self, tenant: TenantId) -> Result<Vec<User>> {
        let rows = sqlx::query("SELECT * FROM users WHERE tenant_id = $1 ORDER BY name")
            .bind(tenant.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_row).collect()
    }

    /// Stores a new token for `user` (by name). Only the hash of `secret` is kept; the returned
    /// value carries the secret so it can be shown once.
    #[allow(clippy::too_many_arguments)] // Each is a distinct field of the token; a struct would only move them.
    pub async fn create_token(
        &self,
        tenant: TenantId,
        user: &Name,
        secret: String,
        secret_hash: &str,
        description: Option<Description>,
        expires_at: OffsetDateTime,
        actor: &Actor,
    ) -> Result<CreatedToken> {
        self.insert_token(
            tenant,
            user,
            secret,
            secret_hash,
            description,
            expires_at,
            actor,
            false,
        )
        .await
    }

    /// A token for a web UI session: an API token but for one thing, a change of the user's
    /// password revokes it (see [`Store::set_password`]).
    pub async fn create_session_token(
        &self,
        tenant: TenantId,
        user: &Name,
        secret: String,
        secret_hash: &str,
        expires_at: OffsetDateTime,
        actor: &Actor,
    ) -> Result<CreatedToken> {
        let description =
            Description::try_from("web session".to_owned()).expect("a valid description");
        self.insert_token(
            tenant,
            user,
            secret,
            secret_hash,
            Some(description),
            expires_at,
            actor,
            true,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert_token(
        &self,
        tenant: TenantId,
        user: &Name,
        secret: String,
        secret_hash: &str,
        description: Option<Description>,
        expires_at: OffsetDateTime,
        actor: &Actor,
        web_session: bool,
    ) -> Result<CreatedToken> {
        let mut w = self.write(tenant).await?;
        let owner = user_by_name(&mut w, tenant, user).await?;
        let now = now_ms();
        let token = Token {
            id: TokenId::new(),
            user: owner.name.clone(),
            role: owner.role,
            description,
            created_at: from_ms(now),
            expires_at: from_ms(to_ms(expires_at)),
            last_used_at: None,
            revoked_at: None,
        };
        sqlx::query(
            "INSERT INTO tokens (id, tenant_id, user_id, secret_hash, description, created_at, expires_at, web_session) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(token.id.to_string())
        .bind(tenant.to_string())
        .bind(owner.id.to_string())
        .bind(secret_hash)
        .bind(token.description.as_ref().map(|d| d.to_string()))
        .bind(now)
        .bind(to_ms(token.expires_at))
        .bind(i32::from(web_session))
        .execute(&mut *w.tx)
        .await?;
        w.commit_with_event(tenant, actor, NewEvent {
            action: "token.created",
            object_kind: "token",
            object_id: token.id.to_string(),
            object_name: owner.name.as_str(),
            detail: json!({
                "user": owner.name,
                "expires_at": token.expires_at.format(&time::format_description::well_known::Rfc3339).ok(),
            }),
        })
        .await?;
        Ok(CreatedToken { token, secret })
    }

    pub async fn list_tokens(
        &self,
        tenant: TenantId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Token>> {
        let sql = "SELECT t.*, u.name AS user_name, u.role FROM tokens t JOIN users u ON u.id = t.user_id \
                   WHERE t.tenant_id = $1 AND t.id > $2 ORDER BY t.id LIMIT $3";
        self.fetch_page(sql, tenant, after, limit, rows::token, |t| t.id.to_string())
            .await
    }

    pub async fn revoke_token(
        &self,
        tenant: TenantId,
        id: TokenId,
        actor: &Actor,
    ) -> Result<Token> {
        let mut w = self.write(tenant).await?;
        let now = now_ms();
        let row = sqlx::query(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE tenant_id = $2 AND id = $3 \
             RETURNING *, (SELECT name FROM users WHERE id = tokens.user_id) AS user_name, \
             (SELECT role FROM users WHERE id = tokens.user_id) AS role",
        )
        .bind(now)
        .bind(tenant.to_string())
        .bind(id.to_string())
        .fetch_optional(&mut *w.tx)
        .await?
        .ok_or_else(|| StoreError::not_found("token", id))?;
        let token = rows::token(&row)?;
        w.commit_with_event(
            tenant,
            actor,
            NewEvent {
                action: "token.revoked",
                object_kind: "token",
                object_id: id.to_string(),
                object_name: token.user.as_str(),
                detail: json!({}),
            },
        )
        .await?;
        Ok(token)
    }

    /// The identity behind a token's hash, if the token exists, is unexpired and not revoked.
    pub async fn authenticate(&self, secret_hash: &str) -> Result<Option<Principal>> {
        let row = sqlx::query(
            "SELECT t.id AS token_id, t.tenant_id, n.name AS tenant_name, u.id AS user_id, \
             u.name AS user_name, u.role, t.expires_at FROM tokens t \
             JOIN users u ON u.id = t.user_id JOIN tenants n ON n.id = t.tenant_id \
             WHERE t.secret_hash = $1 AND t.revoked_at IS NULL AND t.expires_at > $2",
        )
        .bind(secret_hash)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(Principal {
            tenant_id: crate::parse_id("tenant id", &row.try_get::<String, _>("tenant_id")?)?,
            tenant: row.try_get::<String, _>("tenant_name")?.parse()?,
            user_id: crate::parse_id("user id", &row.try_get::<String, _>("user_id")?)?,
            user: row.try_get::<String, _>("user_name")?.parse()?,
            role: rows::role(&row.try_get::<String, _>("role")?)?,
            token_id: crate::parse_id("token id", &row.try_get::<String, _>("token_id")?)?,
            token_expires_at: crate::from_ms(row.try_get("expires_at")?),
        }))
    }

    /// Sets `user`'s password to the one whose hash is `password_hash`, and ends the user's web
    /// sessions but `keep` (the session that changes it, if it is one): whoever logged in with
    /// the old password is logged out. API tokens stay.
    pub async fn set_password(
        &self,
        tenant: TenantId,
        user: &Name,
        password_hash: &str,
        keep: Option<TokenId>,
        actor: &Actor,
    ) -> Result<User> {
        let mut w = self.write(tenant).await?;
        let found = user_by_name(&mut w, tenant, user).await?;
        sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(password_hash)
            .bind(found.id.to_string())
            .execute(&mut *w.tx)
            .await?;
        let ended = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE user_id = $2 AND web_session = 1 \
             AND revoked_at IS NULL AND expires_at > $1 AND id <> $3",
        )
        .bind(now_ms())
        .bind(found.id.to_string())
        .bind(keep.map(|id| id.to_string()).unwrap_or_default())
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        let mut event = user_event("user.password_set", &found);
        event.detail["sessions_ended"] = json!(ended);
        w.commit_with_event(tenant, actor, event).await?;
        Ok(found)
    }

    /// The user `user` of the tenant called `tenant`, if both exist and the user has a password.
    pub async fn password_user(&self, tenant: &Name, user: &Name) -> Result<Option<PasswordUser>> {
        let row = sqlx::query(
            "SELECT u.*, n.id AS tenant FROM users u JOIN tenants n ON n.id = u.tenant_id \
             WHERE n.name = $1 AND u.name = $2 AND u.password_hash IS NOT NULL",
        )
        .bind(tenant.as_str())
        .bind(user.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(PasswordUser {
            tenant_id: crate::parse_id("tenant id", &row.try_get::<String, _>("tenant")?)?,
            user: user_row(&row)?,
            password_hash: row.try_get("password_hash")?,
        }))
    }

    /// Whether the token exists and is neither revoked nor expired.
    pub async fn token_active(&self, id: TokenId) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 FROM tokens WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(id.to_string())
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Records that a token was used. Not audited: it is bookkeeping, not a change.
    pub async fn touch_token(&self, id: TokenId, at: OffsetDateTime) -> Result<()> {
        let _writer = self.bookkeeping_lock().await;
        sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE id = $2")
            .bind(to_ms(at))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

async fn insert_user(w: &mut crate::WriteTx, tenant: TenantId, user: &User) -> Result<()> {
    sqlx::query(
        "INSERT INTO users (id, tenant_id, name, role, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(user.id.to_string())
    .bind(tenant.to_string())
    .bind(user.name.as_str())
    .bind(user.role.as_str())
    .bind(crate::to_ms(user.created_at))
    .execute(&mut *w.tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::NameTaken {
                kind: "user",
                name: user.name.to_string(),
            }
        } else {
            e.into()
        }
    })?;
    Ok(())
}

fn user_event<'a>(action: &'a str, user: &'a User) -> NewEvent<'a> {
    NewEvent {
        action,
        object_kind: "user",
        object_id: user.id.to_string(),
        object_name: user.name.as_str(),
        detail: json!({ "role": user.role }),
    }
}

/// The tenant's user called `name`, or else whose id it is, read inside a write.
async fn user_by_name(w: &mut crate::WriteTx, tenant: TenantId, name: &Name) -> Result<User> {
    let row = sqlx::query(
        "SELECT * FROM users WHERE tenant_id = $1 AND (name = $2 OR id = $2) \
         ORDER BY name = $2 DESC LIMIT 1",
    )
    .bind(tenant.to_string())
    .bind(name.as_str())
    .fetch_optional(&mut *w.tx)
    .await?
    .ok_or_else(|| StoreError::not_found("user", name))?;
    user_row(&row)
}

fn user_row(row: &sqlx::any::AnyRow) -> Result<User> {
    Ok(User {
        id: crate::parse_id("user id", &row.try_get::<String, _>("id")?)?,
        name: row.try_get::<String, _>("name")?.parse()?,
        role: rows::role(&row.try_get::<String, _>("role")?)?,
        created_at: from_ms(row.try_get("created_at")?),
    })
}
