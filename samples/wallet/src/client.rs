//! A wallet client on `goverse::client`: deposits and withdrawals are reliable calls, retried
//! with the same call id until their outcome is known; every retry is reported.

use std::sync::Arc;
use std::time::Duration;

use goverse::client::{Client, ReliableError};
use goverse::prelude::*;

use crate::WalletRef;
use crate::proto::{DepositRequest, GetBalanceRequest, WalletResponse, WithdrawRequest};

pub use goverse::client::new_call_id;

/// The object type of wallets.
pub const WALLET_TYPE: &str = "Wallet";

/// Why a wallet operation has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    /// The method ran and failed (status FAILED): retrying returns the same.
    #[error("the call failed: {0}")]
    Failed(String),
    /// The call was refused and did not run (status SKIPPED, not a passing failure).
    #[error("the call was refused: {0}")]
    Refused(String),
    /// No answer within the retry period (every gate or the server down): the call may or may
    /// not have run; retrying later with the same call id finds out, and never applies it twice.
    #[error("no answer within {waited:?} ({last}); retry later with --id {call_id}")]
    GaveUp {
        /// The call id to retry with.
        call_id: String,
        /// How long the client tried.
        waited: Duration,
        /// The last attempt's failure.
        last: String,
    },
    /// A balance read found no answer within the retry period.
    #[error("no answer within {waited:?} ({last})")]
    Unreachable {
        /// How long the client tried.
        waited: Duration,
        /// The last attempt's failure.
        last: String,
    },
}

impl From<ReliableError> for WalletError {
    fn from(err: ReliableError) -> Self {
        match err {
            ReliableError::Failed(e) => Self::Failed(e.to_string()),
            ReliableError::Refused(e) => Self::Refused(e.to_string()),
            ReliableError::Unknown {
                call_id,
                waited,
                last,
                ..
            } => Self::GaveUp {
                call_id,
                waited,
                last: last.to_string(),
            },
        }
    }
}

/// A transfer's two steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// The withdrawal; `ok` false means the transfer did not happen (insufficient funds).
    pub withdrawn: WalletResponse,
    /// The deposit, when the withdrawal went through.
    pub deposited: Option<WalletResponse>,
}

/// Hears what the client is retrying, one line per retry.
pub type RetryReport = Arc<dyn Fn(String) + Send + Sync>;

/// A wallet client of a cluster's gates. The connection is made on the first call, remade
/// after failures and moved to another gate when one goes away, so a client outlives a server
/// restart.
#[derive(Clone)]
pub struct WalletClient {
    client: Client,
    retry_for: Duration,
    report: Option<RetryReport>,
}

impl std::fmt::Debug for WalletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalletClient")
            .field("client", &self.client)
            .field("retry_for", &self.retry_for)
            .finish_non_exhaustive()
    }
}

impl WalletClient {
    /// A client of the gates at `gates` (`host:port` of their gRPC APIs, tried in turn) that
    /// retries an operation whose outcome is unknown for `retry_for`, telling `report` (when
    /// given) about each retry.
    pub fn new(gates: &[String], retry_for: Duration, report: Option<RetryReport>) -> Self {
        let mut builder = Client::builder(gates.iter().cloned())
            .call_timeout(Duration::from_secs(10))
            .backoff(Duration::from_millis(50), Duration::from_secs(1))
            .reliable_retry_for(retry_for);
        if let Some(report) = report.clone() {
            builder = builder.on_retry(move |retry| {
                report(format!(
                    "retrying {} with call id {} (attempt {} failed: {}); next try in {:?}",
                    retry.target, retry.call_id, retry.attempt, retry.error, retry.delay
                ));
            });
        }
        Self {
            client: builder.build(),
            retry_for,
            report,
        }
    }

    /// Credits `amount` to `wallet`, exactly once for `call_id`.
    pub async fn deposit(
        &self,
        wallet: &str,
        amount: i64,
        call_id: &str,
    ) -> Result<WalletResponse, WalletError> {
        Ok(self
            .client
            .call_reliable(
                WALLET_TYPE,
                wallet,
                "Deposit",
                DepositRequest { amount },
                call_id,
            )
            .await?)
    }

    /// Debits `amount` from `wallet`, exactly once for `call_id`.
    pub async fn withdraw(
        &self,
        wallet: &str,
        amount: i64,
        call_id: &str,
    ) -> Result<WalletResponse, WalletError> {
        Ok(self
            .client
            .call_reliable(
                WALLET_TYPE,
                wallet,
                "Withdraw",
                WithdrawRequest { amount },
                call_id,
            )
            .await?)
    }

    /// Moves `amount` from `from` to `to`, exactly once for `transfer_id`: the withdrawal and
    /// the deposit are reliable calls with ids derived from it, so calling this again with the
    /// same id after any interruption finishes the transfer without repeating a step.
    pub async fn transfer(
        &self,
        from: &str,
        to: &str,
        amount: i64,
        transfer_id: &str,
    ) -> Result<Transfer, WalletError> {
        let withdrawn = self
            .withdraw(from, amount, &format!("{transfer_id}/withdraw"))
            .await?;
        if !withdrawn.ok {
            return Ok(Transfer {
                withdrawn,
                deposited: None,
            });
        }
        let deposited = self
            .deposit(to, amount, &format!("{transfer_id}/deposit"))
            .await?;
        if !deposited.ok {
            // The money left `from` and `to` refused it (an overflow): give it back.
            self.deposit(from, amount, &format!("{transfer_id}/refund"))
                .await?;
        }
        Ok(Transfer {
            withdrawn,
            deposited: Some(deposited),
        })
    }

    /// The balance of `wallet`: a plain call (reading twice is harmless), retried while the
    /// cluster cannot answer, for the retry period.
    pub async fn balance(&self, wallet: &str) -> Result<i64, WalletError> {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err = match WalletRef::new(wallet)
                .get_balance(&self.client, GetBalanceRequest {})
                .await
            {
                Ok(answer) => return Ok(answer.balance),
                Err(err)
                    if matches!(
                        err.code(),
                        ErrorCode::Unavailable | ErrorCode::DeadlineExceeded
                    ) =>
                {
                    err
                }
                Err(err) => return Err(WalletError::Refused(err.to_string())),
            };
            if started.elapsed() + delay >= self.retry_for {
                return Err(WalletError::Unreachable {
                    waited: started.elapsed(),
                    last: err.to_string(),
                });
            }
            if let Some(report) = &self.report {
                report(format!(
                    "retrying the balance of {wallet} (attempt {attempt} failed: {err}); next \
                     try in {delay:?}"
                ));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }
}
