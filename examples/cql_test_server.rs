//! Runs the CQL test server (kassandra, in memory) on 127.0.0.1 with the
//! trailcast schema in keyspace `trailcast`, until Ctrl-C, so that a release
//! server and the loadgen can run against the Scylla backend on a machine
//! without ScyllaDB: how deploy/CAPACITY.md counts the statements each
//! operation issues (`trailcast_scylla_requests_total` and
//! `trailcast_scylla_rows_written_total` in the server's /metrics). It
//! counts requests, not time: kassandra is no model of Scylla's speed.
//!
//! cargo run --release --example cql_test_server
//!   (prints `cql test server at 127.0.0.1:PORT`; then
//!   `trailcast serve --scylla-nodes 127.0.0.1:PORT`)

use trailcast::store::scylla;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tester = kassandra_tester::KassandraTester::new(
        kassandra_tester::kassandra::session::KassandraSession::new(),
    );
    let served = runtime.block_on(tester.in_scope(|addr| async move {
        // The schema from a second runtime thread: the server runs on this one.
        let node = addr.to_string();
        let migrated = std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let mut args = trailcast::config::Config::defaults().scylla;
                args.nodes = vec![node];
                args.replication =
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}".to_owned();
                let session = scylla::connect(&args, false).await?;
                scylla::migrate(&session, &args.keyspace, &args.replication).await
            })
        });
        while !migrated.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        match migrated.join() {
            Ok(Ok(())) => println!("cql test server at {addr}"),
            Ok(Err(e)) => eprintln!("migrating the schema failed: {e:#}"),
            Err(_) => eprintln!("migrating the schema panicked"),
        }
        let _ = tokio::signal::ctrl_c().await;
        Ok::<(), ()>(())
    }));
    drop(served);
    Ok(())
}
