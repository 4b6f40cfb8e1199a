use clap::Parser;
use tokio::net::TcpListener;

use trailcast::config::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command } = Cli::parse();
    match command {
        Command::Serve(config) => {
            trailcast::telemetry::init_logging(&config.log_format);
            let listener = TcpListener::bind(config.listen).await?;
            // One plain line on stdout that scripts (and tests) can read.
            println!("trailcast listening on http://{}", listener.local_addr()?);
            trailcast::run(*config, listener, shutdown_signal()).await
        }
        Command::Migrate(args) => {
            use trailcast::store::scylla;
            let cql = &args.scylla;
            if args.print {
                scylla::check_keyspace(&cql.keyspace)?;
                print!("{}", scylla::render_schema(&cql.keyspace, &cql.replication));
                return Ok(());
            }
            if cql.nodes.is_empty() {
                anyhow::bail!("migrate needs --scylla-nodes (or TRAILCAST_SCYLLA_NODES)");
            }
            let session = scylla::connect(cql, true).await?;
            scylla::migrate(&session, &cql.keyspace, &cql.replication).await?;
            let versions = scylla::applied_versions(&session, &cql.keyspace).await?;
            println!(
                "keyspace {} at schema version {} (recorded: {versions:?})",
                cql.keyspace,
                versions.last().copied().unwrap_or(scylla::SCHEMA_VERSION),
            );
            Ok(())
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
