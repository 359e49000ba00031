//! A wallet client over a gate's gRPC API (upstream's `gate.GateService`): deposits and
//! withdrawals as reliable calls, retried with the same call id until their outcome is known.

use std::time::{Duration, Instant};

use goverse::prost::{Message as _, Name as _};
use goverse_proto::gate::gate_service_client::GateServiceClient;
use goverse_proto::gate::{CallObjectRequest, ReliableCallObjectRequest};
use tonic::transport::{Channel, Endpoint};

use crate::proto::{DepositRequest, GetBalanceRequest, WalletResponse, WithdrawRequest};

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
    /// No answer within the retry period (the server is down?): the call may or may not have
    /// run; retrying later with the same call id finds out.
    #[error("no answer within {0:?}; retry later with the same call id")]
    GaveUp(Duration),
}

/// A transfer's two steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// The withdrawal; `ok` false means the transfer did not happen (insufficient funds).
    pub withdrawn: WalletResponse,
    /// The deposit, when the withdrawal went through.
    pub deposited: Option<WalletResponse>,
}

/// A new call id: 16 bytes (a microsecond timestamp and 8 random bytes) in padded URL-safe
/// base64, the shape upstream's clients generate.
pub fn new_call_id() -> String {
    use base64::Engine as _;
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&micros.to_be_bytes());
    bytes[8..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
    base64::engine::general_purpose::URL_SAFE.encode(bytes)
}

/// A wallet client of one gate. The connection is made lazily and remade after failures, so a
/// client outlives a server restart.
#[derive(Debug, Clone)]
pub struct WalletClient {
    gate: GateServiceClient<Channel>,
    retry_for: Duration,
    call_timeout: Duration,
}

fn any<M: goverse::prost::Message + goverse::prost::Name>(message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("{}{}", goverse::TYPE_URL_PREFIX, M::full_name()),
        value: message.encode_to_vec(),
    }
}

fn decode(any: Option<prost_types::Any>) -> Result<WalletResponse, WalletError> {
    let any = any.ok_or_else(|| WalletError::Failed("the answer has no response".to_owned()))?;
    if !any.type_url.ends_with(&WalletResponse::full_name()) {
        return Err(WalletError::Failed(format!(
            "the answer is a {}, not a wallet.WalletResponse",
            any.type_url
        )));
    }
    WalletResponse::decode(any.value.as_slice())
        .map_err(|e| WalletError::Failed(format!("the answer does not decode: {e}")))
}

/// Whether a gRPC failure leaves the call's outcome unknown, so the same request is retried.
fn worth_retrying(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
            | Code::ResourceExhausted
    )
}

impl WalletClient {
    /// A client of the gate at `address` (`host:port` of its gRPC API).
    pub fn new(address: &str) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(format!("http://{address}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            gate: GateServiceClient::new(channel),
            retry_for: Duration::from_secs(60),
            call_timeout: Duration::from_secs(10),
        })
    }

    /// How long an operation keeps retrying before giving up with [`WalletError::GaveUp`].
    pub fn retry_for(mut self, period: Duration) -> Self {
        self.retry_for = period;
        self
    }

    /// Credits `amount` to `wallet`, exactly once for `call_id`.
    pub async fn deposit(
        &mut self,
        wallet: &str,
        amount: i64,
        call_id: &str,
    ) -> Result<WalletResponse, WalletError> {
        self.reliable(wallet, "Deposit", any(&DepositRequest { amount }), call_id)
            .await
    }

    /// Debits `amount` from `wallet`, exactly once for `call_id`.
    pub async fn withdraw(
        &mut self,
        wallet: &str,
        amount: i64,
        call_id: &str,
    ) -> Result<WalletResponse, WalletError> {
        self.reliable(
            wallet,
            "Withdraw",
            any(&WithdrawRequest { amount }),
            call_id,
        )
        .await
    }

    /// Moves `amount` from `from` to `to`, exactly once for `transfer_id`: the withdrawal and
    /// the deposit are reliable calls with ids derived from it, so calling this again with the
    /// same id after any interruption finishes the transfer without repeating a step.
    pub async fn transfer(
        &mut self,
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

    /// The balance of `wallet` (a plain call: reading twice is harmless).
    pub async fn balance(&mut self, wallet: &str) -> Result<i64, WalletError> {
        let request = CallObjectRequest {
            client_id: String::new(),
            r#type: WALLET_TYPE.to_owned(),
            id: wallet.to_owned(),
            method: "GetBalance".to_owned(),
            request: Some(any(&GetBalanceRequest {})),
        };
        let timeout = self.call_timeout;
        self.retrying(|mut gate| {
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(timeout);
            async move {
                match gate.call_object(call).await {
                    Ok(answer) => {
                        Try::Done(decode(answer.into_inner().response).map(|r| r.balance))
                    }
                    Err(status) if worth_retrying(&status) => Try::Again,
                    Err(status) => {
                        Try::Done(Err(WalletError::Refused(status.message().to_owned())))
                    }
                }
            }
        })
        .await
    }

    /// One reliable call, retried with the same call id until its outcome is known.
    async fn reliable(
        &mut self,
        wallet: &str,
        method: &str,
        request: prost_types::Any,
        call_id: &str,
    ) -> Result<WalletResponse, WalletError> {
        let request = ReliableCallObjectRequest {
            call_id: call_id.to_owned(),
            r#type: WALLET_TYPE.to_owned(),
            id: wallet.to_owned(),
            method: method.to_owned(),
            request: Some(request),
        };
        let timeout = self.call_timeout;
        self.retrying(|mut gate| {
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(timeout);
            async move {
                let answer = match gate.reliable_call_object(call).await {
                    Ok(answer) => answer.into_inner(),
                    // The outcome is unknown: the same call id again is safe.
                    Err(status) if worth_retrying(&status) => return Try::Again,
                    Err(status) => {
                        return Try::Done(Err(WalletError::Refused(status.message().to_owned())));
                    }
                };
                match answer.status.as_str() {
                    "SUCCESS" => Try::Done(decode(answer.response)),
                    "FAILED" => Try::Done(Err(WalletError::Failed(answer.error))),
                    // Did not take effect. A store or node that was unavailable may be back on
                    // the next try; other refusals stay refused.
                    "SKIPPED"
                        if answer.error.starts_with("unavailable")
                            || answer.error.starts_with("deadline_exceeded") =>
                    {
                        Try::Again
                    }
                    "SKIPPED" => Try::Done(Err(WalletError::Refused(answer.error))),
                    other => Try::Done(Err(WalletError::Failed(format!(
                        "unknown status {other:?}: {}",
                        answer.error
                    )))),
                }
            }
        })
        .await
    }

    /// Runs `attempt` until it is done, with back-off, for at most the retry period.
    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, WalletError>
    where
        F: FnMut(GateServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Try<T>>,
    {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            if let Try::Done(result) = attempt(self.gate.clone()).await {
                return result;
            }
            if started.elapsed() >= self.retry_for {
                return Err(WalletError::GaveUp(self.retry_for));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

/// One attempt's verdict.
enum Try<T> {
    Done(Result<T, WalletError>),
    Again,
}
