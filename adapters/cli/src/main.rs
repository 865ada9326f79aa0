//! The `hybridsync` command: one clap subcommand per module.
//!
//! To add a subcommand: write `mod NAME;` with an `Args` (clap `Args`) and a
//! `run(args) -> anyhow::Result<()>`, then add one variant to [`Command`] and one arm to
//! `main`. Each subcommand builds its own runtime (if it needs one).
#![forbid(unsafe_code)]

mod bench;
mod demo;
mod node;
mod sim;
mod support;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// hybridsync: a leaderless peer-to-peer sync engine.
#[derive(Debug, Parser)]
#[command(name = "hybridsync", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Three devices over iroh on loopback with SQLite files: write, conflict, go offline,
    /// come back, converge.
    Demo(demo::Args),
    /// A long-running device with a persistent key and database, driven by line commands on
    /// stdin.
    Node(node::Args),
    /// Deterministic simulation over a range of seeds (loss, duplication, reordering,
    /// partitions, crashes, clock skew, membership changes); non-zero exit on any failure.
    Sim(sim::Args),
    /// Benchmarks against baselines measured in the same run: engine apply throughput, wire
    /// size, initial sync over iroh + SQLite, reconnect cost, change latency.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Node(args) => node::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
