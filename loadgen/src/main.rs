//! `trailcast-loadgen`: parses options, runs the engine, prints the report.

use clap::Parser;
use trailcast_loadgen::Options;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = Options::parse();
    let json = opts.json;
    let outcome = trailcast_loadgen::run(opts).await?;
    if json {
        println!("{}", outcome.report.to_json());
    } else {
        print!("{}", outcome.report.to_text());
    }
    Ok(())
}
