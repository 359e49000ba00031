//! `wallet`: the wallet sample's terminal client. Deposits, withdrawals and transfers are
//! reliable calls: each has a call id (chosen here and printed before the call, or given with
//! `--id` to retry one), and running the same command again with the same id never applies it
//! twice. Retries are shown as they happen. Exit codes: 0 done, 1 failed or no answer (retry
//! with the printed id), 2 refused (insufficient funds, a bad amount).
//!
//! ```text
//! wallet deposit alice 100
//! wallet withdraw alice 30 --id my-withdrawal-1
//! wallet transfer alice bob 25
//! wallet balance alice
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use goverse_sample_wallet::client::{WalletClient, WalletError, new_call_id};
use goverse_sample_wallet::proto::WalletResponse;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "The wallet sample's client: exactly-once deposits, withdrawals and transfers"
)]
struct Args {
    /// The gate's gRPC address; several, comma-separated, are tried in turn.
    #[arg(
        long,
        default_value = "127.0.0.1:49000",
        env = "GOVERSE_GATE",
        value_delimiter = ','
    )]
    gate: Vec<String>,
    /// Keep retrying an operation whose outcome is unknown (server down) for this many seconds.
    #[arg(long, default_value_t = 30.0)]
    retry_for: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Credits AMOUNT to WALLET.
    Deposit {
        wallet: String,
        amount: i64,
        /// The call id; reuse one to retry an operation whose outcome you did not see.
        #[arg(long)]
        id: Option<String>,
    },
    /// Debits AMOUNT from WALLET (refused when the balance is short).
    Withdraw {
        wallet: String,
        amount: i64,
        #[arg(long)]
        id: Option<String>,
    },
    /// Moves AMOUNT from FROM to TO.
    Transfer {
        from: String,
        to: String,
        amount: i64,
        /// The transfer id; reuse one to finish an interrupted transfer.
        #[arg(long)]
        id: Option<String>,
    },
    /// Prints WALLET's balance.
    Balance { wallet: String },
}

fn show(response: &WalletResponse) -> String {
    if response.ok {
        format!("{}: balance {}", response.wallet_id, response.balance)
    } else {
        format!(
            "{}: refused ({}); balance {}",
            response.wallet_id, response.reason, response.balance
        )
    }
}

/// What a command printed, and whether the operation was refused.
struct Outcome {
    line: String,
    refused: bool,
}

fn outcome(response: &WalletResponse, id: &str) -> Outcome {
    Outcome {
        line: format!("{} (call id {id})", show(response)),
        refused: !response.ok,
    }
}

async fn run(args: Args) -> Result<Outcome, WalletError> {
    let report: goverse_sample_wallet::client::RetryReport = Arc::new(|line| eprintln!("{line}"));
    let client = WalletClient::new(
        &args.gate,
        Duration::from_secs_f64(args.retry_for.max(0.0)),
        Some(report),
    );
    // The id is shown before the call: interrupted, the user still has it to retry with.
    let id_or_new = |id: Option<String>, what: String| {
        let id = id.unwrap_or_else(new_call_id);
        eprintln!("{what} with call id {id}");
        id
    };
    match args.command {
        Command::Deposit { wallet, amount, id } => {
            let id = id_or_new(id, format!("depositing {amount} to {wallet}"));
            let r = client.deposit(&wallet, amount, &id).await?;
            Ok(outcome(&r, &id))
        }
        Command::Withdraw { wallet, amount, id } => {
            let id = id_or_new(id, format!("withdrawing {amount} from {wallet}"));
            let r = client.withdraw(&wallet, amount, &id).await?;
            Ok(outcome(&r, &id))
        }
        Command::Transfer {
            from,
            to,
            amount,
            id,
        } => {
            let id = id_or_new(id, format!("transferring {amount} from {from} to {to}"));
            let t = client.transfer(&from, &to, amount, &id).await?;
            Ok(match t.deposited {
                None => Outcome {
                    line: format!(
                        "transfer refused: {} (transfer id {id})",
                        show(&t.withdrawn)
                    ),
                    refused: true,
                },
                Some(d) => Outcome {
                    line: format!(
                        "transferred {amount}: {}; {} (transfer id {id})",
                        show(&t.withdrawn),
                        show(&d)
                    ),
                    refused: !d.ok,
                },
            })
        }
        Command::Balance { wallet } => {
            let balance = client.balance(&wallet).await?;
            Ok(Outcome {
                line: format!("{wallet}: balance {balance}"),
                refused: false,
            })
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(Outcome { line, refused }) => {
            println!("{line}");
            if refused {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
