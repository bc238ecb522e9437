//! `backlock-chatgen`: generate a sample chat folder, simulate a day on it, compare pages.
//! Each command prints one line of JSON on success.

use std::path::PathBuf;
use std::process::ExitCode;

use backlock_chatgen::{generate, pages_changed, simulate_day, ChatSpec, PAGE_SIZE};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "backlock-chatgen",
    version,
    about = "Sample chat-app data for backlock demos and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new chat folder (msgstore.db + Media/) into a missing or empty directory.
    Generate {
        /// Folder to create.
        #[arg(long)]
        dir: PathBuf,
        /// Total size in MB (10^6 bytes), 15% of it database [default: 300].
        #[arg(long, conflicts_with_all = ["db_mb", "media_mb"])]
        total_mb: Option<u64>,
        /// Database size in MB (with --media-mb instead of --total-mb).
        #[arg(long, requires = "media_mb")]
        db_mb: Option<u64>,
        /// Media size in MB (with --db-mb).
        #[arg(long, requires = "db_mb")]
        media_mb: Option<u64>,
        /// Seed for every random choice.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Simulate one day of chatting on a generated folder.
    Day {
        /// Folder made by `generate`.
        #[arg(long)]
        dir: PathBuf,
        /// Seed of the day's activity (use a new one per day).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Count the pages of B that differ from A.
    PagesChanged {
        /// The file before.
        a: PathBuf,
        /// The file after.
        b: PathBuf,
        /// Page size in bytes.
        #[arg(long, default_value_t = PAGE_SIZE)]
        page_size: usize,
    },
}

const MB: u64 = 1_000_000;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // Our errors already name their cause in Display; no chain walk needed.
            eprintln!("backlock-chatgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Command) -> Result<String, Box<dyn std::error::Error>> {
    Ok(match cmd {
        Command::Generate {
            dir,
            total_mb,
            db_mb,
            media_mb,
            seed,
        } => {
            let spec = match (db_mb, media_mb) {
                (Some(d), Some(m)) => ChatSpec {
                    seed,
                    db_bytes: d.saturating_mul(MB),
                    media_bytes: m.saturating_mul(MB),
                },
                _ => ChatSpec::scaled(total_mb.unwrap_or(300).saturating_mul(MB), seed),
            };
            serde_json::to_string(&generate(&dir, &spec)?)?
        }
        Command::Day { dir, seed } => serde_json::to_string(&simulate_day(&dir, seed)?)?,
        Command::PagesChanged { a, b, page_size } => {
            let (changed, total) = pages_changed(&a, &b, page_size)
                .map_err(|e| format!("compare {} and {}: {e}", a.display(), b.display()))?;
            serde_json::json!({ "changed": changed, "total": total }).to_string()
        }
    })
}
