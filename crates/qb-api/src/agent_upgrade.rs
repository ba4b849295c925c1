//! Agent upgrades: a tenant's hosts move to the controller's build of the agent, one host
//! first (the canary), then in batches; a host whose new agent fails its trial goes back to
//! the build it ran, and the upgrade stops.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::{NodeId, NodeName};

/// Where a tenant's agent upgrade is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentUpgradeState {
    /// Hosts are being upgraded.
    Running,
    /// No host starts upgrading until it is resumed (those on trial finish theirs).
    Paused,
    /// A host failed its trial; `message` says which and why. Start again once fixed.
    Stopped,
    /// Every host runs the build.
    Done,
}

impl AgentUpgradeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
            Self::Done => "done",
        }
    }
}

impl std::str::FromStr for AgentUpgradeState {
    type Err = crate::InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Running, Self::Paused, Self::Stopped, Self::Done]
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| crate::InvalidValue(format!("no agent upgrade state {s:?}")))
    }
}

/// A host's part in its tenant's agent upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentUpgradeNodeState {
    /// Waits its turn.
    Waiting,
    /// Offline: upgrades once it is back.
    Offline,
    /// Its agent cannot upgrade itself (it speaks an older protocol): upgrade its package.
    NeedsPackage,
    /// Told to upgrade: downloading, or running the new build on trial.
    Upgrading,
    /// Runs the build.
    Upgraded,
    /// Its new agent failed the trial and it went back to the build before; `message` says why.
    Failed,
}

impl AgentUpgradeNodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Offline => "offline",
            Self::NeedsPackage => "needs_package",
            Self::Upgrading => "upgrading",
            Self::Upgraded => "upgraded",
            Self::Failed => "failed",
        }
    }
}

/// A tenant's agent upgrade.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentUpgrade {
    /// The build the hosts move to: the SHA-256 of the agent binary.
    pub build: String,
    /// The agent's version in that build.
    pub version: String,
    pub state: AgentUpgradeState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How many hosts upgrade at once after the canary.
    pub batch_size: u32,
    /// How long a host's new agent has to reach the controller before the host goes back.
    pub trial_seconds: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Every host of the tenant, by name.
    pub nodes: Vec<AgentUpgradeNode>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentUpgradeNode {
    pub node_id: NodeId,
    pub name: NodeName,
    pub state: AgentUpgradeNodeState,
    /// The build its agent runs, as it last said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Start moving the tenant's hosts to the controller's build of the agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartAgentUpgrade {
    /// How many hosts upgrade at once once the canary passed; 1 by default.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub batch_size: Option<u32>,
    /// How long a host's new agent has to reach the controller before the host goes back to
    /// the build it ran; 120 s by default.
    #[serde(default)]
    #[schema(minimum = 10, maximum = 3600)]
    pub trial_seconds: Option<u32>,
}

impl StartAgentUpgrade {
    pub const DEFAULT_TRIAL_SECONDS: u32 = 120;

    /// The batch size and trial, checked.
    pub fn settings(&self) -> Result<(u32, u32), crate::InvalidValue> {
        let batch = self.batch_size.unwrap_or(1);
        let trial = self.trial_seconds.unwrap_or(Self::DEFAULT_TRIAL_SECONDS);
        if !(1..=1000).contains(&batch) {
            return Err(crate::InvalidValue(format!(
                "batch_size must be between 1 and 1000, not {batch}"
            )));
        }
        if !(10..=3600).contains(&trial) {
            return Err(crate::InvalidValue(format!(
                "trial_seconds must be between 10 and 3600, not {trial}"
            )));
        }
        Ok((batch, trial))
    }
}
