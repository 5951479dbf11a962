//! A real anvil from the pinned npm package, one per test on a free loopback port, and a JSON-RPC
//! proxy to put in front of it.
#![allow(dead_code)]

use std::path::PathBuf;

use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::signers::local::PrivateKeySigner;

/// Path of the pinned anvil binary; fails the test (never skips it) when `npm ci` has not run.
pub fn anvil_path() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    assert!(
        path.is_file(),
        "anvil not found at {}: run `npm ci` at the repository root",
        path.display()
    );
    path
}

/// Starts anvil on a free loopback port (port 0: anvil picks one and reports it).
pub fn spawn_anvil() -> AnvilInstance {
    spawn(Anvil::at(anvil_path()))
}

/// The same, posing as chain `chain_id` (to look like a chain that is not a dev chain).
pub fn spawn_anvil_as_chain(chain_id: u64) -> AnvilInstance {
    spawn(Anvil::at(anvil_path()).chain_id(chain_id))
}

fn spawn(anvil: Anvil) -> AnvilInstance {
    anvil
        .host("127.0.0.1")
        .port(0u16)
        .try_spawn()
        .unwrap_or_else(|error| panic!("could not start anvil: {error}"))
}

/// Dev key `index` of the instance.
pub fn dev_key(anvil: &AnvilInstance, index: usize) -> PrivateKeySigner {
    PrivateKeySigner::from(anvil.keys()[index].clone())
}

/// Deploys the Settlement contract (and the test token) on `anvil` with dev key 0 as operator.
pub async fn deploy(
    anvil: &AnvilInstance,
    params: &tollgate_settle::DeployParams,
) -> tollgate_settle::DeployedAddresses {
    tollgate_settle::deploy(&anvil.endpoint(), dev_key(anvil, 0), None, params)
        .await
        .expect("deploy")
}

/// A JSON-RPC proxy in front of a node: it counts the requests per method and answers HTTP 503
/// (as an overloaded provider does) to those `refuse(method, earlier)` picks, where `earlier` is
/// how many requests of that method came before; everything else is forwarded.
#[derive(Clone, Debug)]
pub struct RpcProxy {
    /// The proxy's URL, to connect a provider to.
    pub url: String,
    calls: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
}

impl RpcProxy {
    /// Starts a proxy to `upstream`.
    pub async fn start(
        upstream: String,
        refuse: impl Fn(&str, u64) -> bool + Send + Sync + 'static,
    ) -> Self {
        use axum::http::{StatusCode, header};
        use axum::response::IntoResponse;
        let calls: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>> =
            std::sync::Arc::default();
        let refuse = std::sync::Arc::new(refuse);
        let client = reqwest::Client::new();
        let counted = std::sync::Arc::clone(&calls);
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |body: String| {
                let (client, upstream, calls, refuse) = (
                    client.clone(),
                    upstream.clone(),
                    std::sync::Arc::clone(&counted),
                    std::sync::Arc::clone(&refuse),
                );
                async move {
                    let mut refused = false;
                    for method in methods(&body) {
                        let mut calls = calls.lock().expect("proxy counts");
                        let count = calls.entry(method.clone()).or_default();
                        refused |= refuse(&method, *count);
                        *count += 1;
                    }
                    if refused {
                        return (StatusCode::SERVICE_UNAVAILABLE, "provider overloaded")
                            .into_response();
                    }
                    let answer = client
                        .post(&upstream)
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(body)
                        .send()
                        .await
                        .expect("the node answers the proxy");
                    let status = answer.status().as_u16();
                    let text = answer.text().await.expect("the node's answer");
                    (
                        StatusCode::from_u16(status).expect("status"),
                        [(header::CONTENT_TYPE, "application/json")],
                        text,
                    )
                        .into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy binds");
        let address = listener.local_addr().expect("proxy address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{address}"),
            calls,
        }
    }

    /// Requests of `method` received so far, refused ones included.
    pub fn calls(&self, method: &str) -> u64 {
        self.calls
            .lock()
            .expect("proxy counts")
            .get(method)
            .copied()
            .unwrap_or_default()
    }
}

/// The methods of a JSON-RPC request or batch.
fn methods(body: &str) -> Vec<String> {
    let request: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let requests = match request {
        serde_json::Value::Array(batch) => batch,
        single => vec![single],
    };
    requests
        .iter()
        .filter_map(|request| request["method"].as_str().map(str::to_owned))
        .collect()
}

/// `tollgate serve` on `anvil`'s deployment `deployed` with `extra` flags, its data and log in
/// `dir`, operated by dev key 0.
pub fn start_dev_server(
    anvil: &AnvilInstance,
    deployed: &tollgate_settle::DeployedAddresses,
    dir: &std::path::Path,
    extra: &[&str],
) -> tollgate_tools::serve::process::ServerProcess {
    let mut args = tollgate_tools::serve::process::dev_chain_args(
        &anvil.endpoint(),
        deployed,
        &dir.join("data"),
    );
    args.extend(extra.iter().map(|flag| (*flag).to_owned()));
    let operator_key = hex::encode(dev_key(anvil, 0).to_bytes());
    tollgate_tools::serve::process::ServerProcess::start(
        env!("CARGO_BIN_EXE_tollgate").as_ref(),
        &args,
        Some(&dir.join("server.log")),
        &[("TOLLGATE_OPERATOR_KEY", &operator_key)],
    )
    .expect("tollgate serve starts")
}

/// Mints `amount_each` test tokens for each of `payers` and deposits them into `deployed`'s
/// Settlement contract (dev key 1 pays the gas).
pub async fn fund(
    anvil: &AnvilInstance,
    deployed: &tollgate_settle::DeployedAddresses,
    payers: &[tollgate_engine::PayerKey],
    amount_each: u128,
) {
    tollgate_settle::devchain::fund_payers(
        &anvil.endpoint(),
        dev_key(anvil, 1),
        payers,
        &tollgate_settle::devchain::FundParams {
            token: deployed.token,
            settlement: deployed.settlement,
            amount_each,
            mint: true,
        },
    )
    .await
    .expect("fund payers");
}
