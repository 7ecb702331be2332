//! The leader's wall clock jumps back and forward an hour (libfaketime,
//! preloaded, reads its offset from a file on every call; the monotonic
//! clock is left alone): TTLs neither stop nor all fire at once, and event
//! time never goes back.

use std::time::Duration;

use anyhow::{Result, ensure};
use mpreg_client::Client;
use mpreg_tests::{Daemon, TestDir, eventually, faketime, sql_rows};
use serde_json::{Value, json};

fn key(identifier: &str) -> Value {
    json!({"namespace": "clock", "identifier": identifier})
}

async fn put(client: &Client, identifier: &str, ttl_seconds: f64) -> Result<()> {
    client
        .cache(
            json!({"operation": "put", "key": key(identifier), "value": 1,
                      "metadata": {"ttl_seconds": ttl_seconds}}),
        )
        .await?;
    Ok(())
}

async fn status(client: &Client, identifier: &str) -> Result<String> {
    let got = client
        .cache(json!({"operation": "get", "key": key(identifier)}))
        .await?;
    Ok(got["status"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_jumps_neither_stop_ttls_nor_fire_them_all_at_once() -> Result<()> {
    let dir = TestDir::new();
    let offset = dir.path().join("faketime-offset");
    let wrapper = faketime::wrapper(&offset)?;
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let daemon = Daemon::start_under(&wrapper, &dir, &[])?;
    let client = Client::connect(&daemon.ready.client_url).await?;
    put(&client, "before", 600.0).await?;

    // Back an hour: a 2 s TTL still runs out in about 2 s, not in an hour.
    faketime::jump(&offset, "-1h")?;
    put(&client, "short", 2.0).await?;
    ensure!(status(&client, "short").await? == "hit");
    eventually("the 2 s entry expired", Duration::from_secs(10), || async {
        match status(&client, "short").await {
            Ok(s) if s == "miss" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;

    // Forward an hour (two from where the wall clock just was): an entry
    // with 10 minutes left does not expire with the jump.
    faketime::jump(&offset, "+1h")?;
    put(&client, "after", 600.0).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for identifier in ["before", "after"] {
        ensure!(
            status(&client, identifier).await? == "hit",
            "{identifier} expired with the jump"
        );
    }

    let times = sql_rows(
        &daemon.ready.admin_url,
        "SELECT index, CAST(time AS BIGINT) AS t FROM events WHERE time IS NOT NULL ORDER BY index",
    )
    .await?;
    let times: Vec<i64> = times.iter().filter_map(|row| row["t"].as_i64()).collect();
    ensure!(times.len() > 3, "{times:?}");
    ensure!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "event time went back: {times:?}"
    );
    Ok(())
}
