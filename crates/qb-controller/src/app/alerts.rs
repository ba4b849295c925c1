//! Alerts and silences, for the API.

use qb_api::{Alert, AlertQuery, AlertState, CreateSilence, PageParams, Silence};
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
}
