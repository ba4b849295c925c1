//! Notification channels and their delivery log, for the API.

use qb_api::{
    Alert, AlertRule, AlertSeverity, AlertState, Channel, ChannelKind, CreateChannel,
    CreatedChannel, Delivery, DeliveryQuery, Name, PageParams,
};
use qb_store::{ChannelTarget, StoreError};
use time::OffsetDateTime;

use super::AppState;
use crate::ApiError;
use crate::auth::Caller;

/// Webhook secrets start with this, so a leaked one is easy to recognize.
const WEBHOOK_SECRET_PREFIX: &str = "qbwh_";

impl AppState {
    pub async fn list_channels(&self, caller: &Caller) -> Result<Vec<Channel>, ApiError> {
        Ok(self.store.list_channels(caller.tenant()).await?)
    }

    /// Makes a channel; a webhook gets a new signing secret, returned here only.
    pub async fn create_channel(
        &self,
        caller: &Caller,
        new: &CreateChannel,
    ) -> Result<CreatedChannel, ApiError> {
        new.validate()?;
        let secret = match new.kind {
            ChannelKind::Webhook => {
                let url = url::Url::parse(new.target.trim()).map_err(|e| {
                    ApiError::invalid(format!("the webhook's target is not a URL: {e}"))
                })?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(ApiError::invalid("the webhook's URL needs a host"));
                }
                if !url.username().is_empty() || url.password().is_some() {
                    return Err(ApiError::invalid(
                        "the webhook's URL must not carry a user or password: the body is \
                         signed with the channel's secret instead",
                    ));
                }
                Some(crate::auth::new_secret_with(WEBHOOK_SECRET_PREFIX).secret)
            }
            ChannelKind::Email => {
                if !self.notifier.has_mail() {
                    return Err(ApiError::invalid(
                        "this controller sends no e-mail: its operator starts it with \
                         --smtp-url and --smtp-from first",
                    ));
                }
                for address in qb_api::email_addresses(&new.target) {
                    address.parse::<lettre::Address>().map_err(|e| {
                        ApiError::invalid(format!(
                            "{} is not an e-mail address: {e}",
                            qb_api::quote(address)
                        ))
                    })?;
                }
                None
            }
        };
        let channel = self
            .store
            .create_channel(
                caller.tenant(),
                new,
                secret.clone(),
                &caller.actor(),
                OffsetDateTime::now_utc(),
            )
            .await?;
        Ok(CreatedChannel { channel, secret })
    }

    pub async fn delete_channel(&self, caller: &Caller, name: &str) -> Result<(), ApiError> {
        let name = channel_name(name)?;
        Ok(self
            .store
            .delete_channel(caller.tenant(), &name, &caller.actor())
            .await?)
    }

    /// Sends a test alert to a channel now, and says how that went.
    pub async fn test_channel(&self, caller: &Caller, name: &str) -> Result<(), ApiError> {
        let name = channel_name(name)?;
        let target = self
            .store
            .channel_target(caller.tenant(), &name)
            .await?
            .ok_or_else(|| {
                ApiError::from(StoreError::NotFound {
                    kind: "notification channel",
                    key: name.to_string(),
                })
            })?;
        let now = OffsetDateTime::now_utc();
        let test = Alert {
            id: format!("test-{}", uuid::Uuid::now_v7()),
            rule: AlertRule::HostOffline,
            severity: AlertSeverity::Warning,
            state: AlertState::Firing,
            object_kind: "channel".to_owned(),
            object_id: target.channel.id.clone(),
            object_name: target.channel.name.to_string(),
            summary: format!(
                "a test of notification channel {}, sent by {}",
                target.channel.name,
                caller.actor().0
            ),
            fired_at: now,
            resolved_at: None,
            silenced: false,
        };
        send_test(self, &target, &test).await
    }

    pub async fn list_deliveries(
        &self,
        caller: &Caller,
        query: &DeliveryQuery,
    ) -> Result<Vec<Delivery>, ApiError> {
        let channel = query.channel.as_deref().map(channel_name).transpose()?;
        let limit = PageParams {
            limit: query.limit,
            after: None,
        }
        .limit()?;
        Ok(self
            .store
            .list_deliveries(caller.tenant(), channel.as_ref(), limit)
            .await?)
    }
}

async fn send_test(app: &AppState, target: &ChannelTarget, test: &Alert) -> Result<(), ApiError> {
    app.notifier
        .send(target, std::slice::from_ref(test))
        .await
        .map_err(|e| {
            ApiError::new(
                qb_api::ProblemCode::NotDelivered,
                format!(
                    "the test notification to {} was not delivered: {e}",
                    target.channel.name
                ),
            )
        })
}

fn channel_name(name: &str) -> Result<Name, ApiError> {
    name.parse::<Name>()
        .map_err(|e| ApiError::invalid(format!("channel: {}", e.0)))
}
