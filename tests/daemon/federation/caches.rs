//! The cache across clusters between real daemons: a namespace belongs to
//! the cluster that holds its entries; reads and writes from another
//! cluster run there, so a read anywhere sees the owner's last
//! acknowledged write at once, and the owner's memory tier is never stale.

use anyhow::Result;
use mpreg_client::Client;
use mpreg_tests::eventually;
use serde_json::{Value, json};

use super::{CONVERGE, Cluster};

async fn cache(
    client: &Client,
    operation: &str,
    identifier: &str,
    value: Option<Value>,
) -> Result<Value> {
    in_namespace(client, "prices", operation, identifier, value).await
}

async fn in_namespace(
    client: &Client,
    namespace: &str,
    operation: &str,
    identifier: &str,
    value: Option<Value>,
) -> Result<Value> {
    let mut request =
        json!({"operation": operation, "key": {"namespace": namespace, "identifier": identifier}});
    if let Some(value) = value {
        request["value"] = value;
    }
    Ok(client.cache(request).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_is_read_and_written_in_the_cluster_that_holds_it() -> Result<()> {
    let c1 = Cluster::start("c1", &[], &[])?;
    let c2 = Cluster::start("c2", &[&c1], &[])?;
    let c3 = Cluster::start("c3", &[&c2], &[])?;
    let owner = Client::connect(&c3.client_url()?).await?;
    let far = Client::connect(&c1.client_url()?).await?;

    // Three namespaces, several entries each: the summary lists each once.
    for namespace in ["a-first", "prices", "zz-last"] {
        for identifier in ["eur", "gbp", "jpy"] {
            in_namespace(&owner, namespace, "put", identifier, Some(json!(1))).await?;
        }
    }
    for namespace in ["a-first", "prices", "zz-last"] {
        eventually(
            &format!("c1 to read c3's {namespace}"),
            CONVERGE,
            || async {
                match in_namespace(&far, namespace, "get", "gbp", None).await {
                    Ok(reply) if reply["entry"]["value"] == json!(1) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await?;
    }

    // Writes from c1 land in c3; each read, here or there, sees the last.
    for n in 2..6 {
        let written = cache(&far, "put", "eur", Some(json!(n))).await?;
        assert_eq!(written["status"], "ok", "{written}");
        assert_eq!(written["revision"], json!(n), "{written}");
        assert_eq!(
            cache(&far, "get", "eur", None).await?["entry"]["value"],
            json!(n)
        );
        assert_eq!(
            cache(&owner, "get", "eur", None).await?["entry"]["value"],
            json!(n)
        );
    }
    cache(&far, "put", "usd", Some(json!(7))).await?;
    assert_eq!(
        cache(&owner, "get", "usd", None).await?["entry"]["value"],
        json!(7)
    );
    let deleted = cache(&far, "delete", "usd", None).await?;
    assert_eq!(deleted["changed"], json!(true), "{deleted}");
    assert_eq!(cache(&owner, "get", "usd", None).await?["status"], "miss");

    // Nothing of the namespace is stored in c1.
    let rows =
        mpreg_tests::sql_rows(&c1.admin()?, "SELECT count(*) AS n FROM cache_entries").await?;
    assert_eq!(rows, [json!({"n": 0})]);
    Ok(())
}
