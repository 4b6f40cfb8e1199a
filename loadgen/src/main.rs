//! `trailcast-loadgen`: parses options, runs the engine, prints the report.

use clap::Parser;
use trailcast_loadgen::Options;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = Options::parse();
    let json = opts.json;
    if let Some(points) = opts.order_test {
        let opts = opts.validated()?;
        let report =
            trailcast_loadgen::order::run(&opts, points, opts.order_block, opts.order_tracks)
                .await?;
        match json {
            true => println!("{}", serde_json::to_string_pretty(&report)?),
            false => print!("{}", report.to_text()),
        }
        return Ok(());
    }
    let outcome = trailcast_loadgen::run(opts).await?;
    if json {
        println!("{}", outcome.report.to_json());
    } else {
        print!("{}", outcome.report.to_text());
    }
    Ok(())
}
