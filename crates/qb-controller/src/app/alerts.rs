//! Alerts and silences, for the API.

use qb_api::{
    Alert, AlertQuery, AlertState, CreateSilence, CreateThresholdRule, Name, PageParams, Silence,
    ThresholdRule,
};
use time::OffsetDateTime;

use super::AppState;
use crate::ApiError;
use crate::auth::Caller;

impl AppState {
    /// The tenant's alerts, newest first: firing ones unless `query.state` says otherwise.
    pub async fn list_alerts(
        &self,
        caller: &Caller,
        query: &AlertQuery,
    ) -> Result<Vec<Alert>, ApiError> {
        let state = match query.state.as_deref() {
            None | Some("firing") => Some(AlertState::Firing),
            Some("resolved") => Some(AlertState::Resolved),
            Some("all") => None,
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "state must be firing, resolved or all, not {}",
                    qb_api::quote(other)
                )));
            }
        };
        let limit = PageParams {
            limit: query.limit,
            after: None,
        }
        .limit()?;
        Ok(self
            .store
            .list_alerts(caller.tenant(), state, limit)
            .await?)
    }

    pub async fn list_silences(&self, caller: &Caller) -> Result<Vec<Silence>, ApiError> {
        Ok(self
            .store
            .list_silences(caller.tenant(), OffsetDateTime::now_utc())
            .await?)
    }

    pub async fn create_silence(
        &self,
        caller: &Caller,
        new: &CreateSilence,
    ) -> Result<Silence, ApiError> {
        new.validate()?;
        Ok(self
            .store
            .create_silence(
                caller.tenant(),
                new,
                &caller.actor(),
                OffsetDateTime::now_utc(),
            )
            .await?)
    }

    pub async fn delete_silence(&self, caller: &Caller, id: &str) -> Result<(), ApiError> {
        Ok(self
            .store
            .delete_silence(caller.tenant(), id, &caller.actor())
            .await?)
    }

    pub async fn list_threshold_rules(
        &self,
        caller: &Caller,
    ) -> Result<Vec<ThresholdRule>, ApiError> {
        Ok(self.store.list_threshold_rules(caller.tenant()).await?)
    }

    pub async fn create_threshold_rule(
        &self,
        caller: &Caller,
        new: &CreateThresholdRule,
    ) -> Result<ThresholdRule, ApiError> {
        new.validate()?;
        Ok(self
            .store
            .create_threshold_rule(
                caller.tenant(),
                new,
                &caller.actor(),
                OffsetDateTime::now_utc(),
            )
            .await?)
    }

    pub async fn delete_threshold_rule(&self, caller: &Caller, name: &str) -> Result<(), ApiError> {
        let name: Name = name
            .parse()
            .map_err(|e: qb_api::InvalidValue| ApiError::invalid(format!("rule: {}", e.0)))?;
        Ok(self
            .store
            .delete_threshold_rule(caller.tenant(), &name, &caller.actor())
            .await?)
    }
}
