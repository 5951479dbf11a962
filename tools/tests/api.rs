//! The query API against a real engine on a temp dir, served by a real axum server on
//! 127.0.0.1:0: every route in `/openapi.json` is fetched and its answer checked against the
//! document's schema; every error is checked for its status and code; the CLI is run against it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use serde_json::Value;
use tollgate_engine::grant::{Grant, PayeeScope, Revocation, SignedGrant};
use tollgate_engine::pipeline::{
    BatchAck, Engine, EngineConfig, EpochStatus, EpochUpdate, FundsEvent, FundsKind, PartRecord,
    SealedEpoch, SubmitRequest, UnknownPayers,
};
use tollgate_engine::verify::{Verifier, VerifyConfig, VerifyPool};
use tollgate_engine::{Address, Domain, PayerKey, Receipt, ReceiptBatch, UnsignedReceipt};
use tollgate_load::cli::DomainArgs;
use tollgate_query::auth::payer_request_headers;
use tollgate_query::client::{EXIT_ERROR, EXIT_NOT_FOUND, EXIT_UNREACHABLE};
use tollgate_query::model::{
    EpochList, EpochView, PayeeView, PayerView, ProofView, WithdrawableSource,
};
use tollgate_query::{Credentials, QueryClient, QueryError};
use tollgate_settle::merkle::{self, EpochTree, Leaf, leaf_hash};
use tollgate_tools::api::auth::{ApiAccess, ApiScope, ApiToken};
use tollgate_tools::api::x402::X402Config;
use tollgate_tools::api::{ApiState, ChainView, ChainViewError, router};
use tollgate_tools::audit::{self, AuditArgs};
use tollgate_tools::query::{
    self as cli, BalanceArgs, CallerArgs, EpochsArgs, PayeeArgs, ProofArgs, QueryCommand,
    ServerArgs,
};

mod common;

const DOMAIN: Domain = Domain {
    chain_id: 31_337,
    contract: Address([0xc0; 20]),
};

/// A chain that answers fixed figures, as settle's alloy view would: what each payee may
/// withdraw, and whether each epoch is final. Anything else is a failed read.
#[derive(Debug)]
struct FixedChain {
    withdrawable: BTreeMap<Address, u128>,
    final_epochs: BTreeMap<u64, bool>,
}

impl FixedChain {
    /// P1 may withdraw 12; epoch 1 is final.
    fn p1_and_epoch_1() -> Self {
        Self {
            withdrawable: BTreeMap::from([(P1, 12)]),
            ..Self::epoch_1()
        }
    }

    /// Nobody may withdraw; epoch 1 is final.
    fn epoch_1() -> Self {
        Self {
            withdrawable: BTreeMap::new(),
            final_epochs: BTreeMap::from([(1, true)]),
        }
    }
}

impl ChainView for FixedChain {
    fn withdrawable(&self, payee: Address) -> BoxFuture<'_, Result<u128, ChainViewError>> {
        let answer = self
            .withdrawable
            .get(&payee)
            .copied()
            .ok_or_else(|| ChainViewError(format!("no such payee {payee}")));
        Box::pin(async move { answer })
    }

    fn epoch_final(&self, epoch: u64) -> BoxFuture<'_, Result<bool, ChainViewError>> {
        let answer = self
            .final_epochs
            .get(&epoch)
            .copied()
            .ok_or_else(|| ChainViewError(format!("no answer about epoch {epoch}")));
        Box::pin(async move { answer })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn payer_of(key: &SigningKey) -> PayerKey {
    PayerKey(key.verifying_key().to_bytes())
}

/// One receipt of the test ledger, remembered so the test can total it independently.
struct Paid {
    payer: u8,
    payee: Address,
    amount: u64,
    nonce: u64,
}

struct Server {
    _dir: tempfile::TempDir,
    engine: Engine,
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
    sealed: Vec<SealedEpoch>,
    _recorder: PrometheusRecorder,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn submit(engine: &Engine, domain: &Domain, batch_seq: u64, paid: &[Paid]) -> BatchAck {
    let receipts: Vec<_> = paid
        .iter()
        .map(|p| {
            UnsignedReceipt {
                payer: payer_of(&key(p.payer)),
                payee: p.payee,
                amount: p.amount,
                nonce: p.nonce,
                timestamp_ms: now_ms(),
                request_hash: [7; 32],
                session: false,
            }
            .sign(&key(p.payer), domain)
        })
        .collect();
    submit_signed(engine, batch_seq, &receipts).await
}

async fn record(engine: &Engine, update: EpochUpdate) {
    engine
        .record_epoch(update)
        .expect("queued")
        .await
        .expect("engine answered")
        .expect("epoch update applied");
}

/// Records `sealed` as submitted then committed with its real root, as settle's loop would.
async fn commit(engine: &Engine, sealed: &SealedEpoch) {
    let root = EpochTree::from_sealed(sealed).expect("leaves").root().0;
    for status in [EpochStatus::Submitted, EpochStatus::Committed] {
        record(
            engine,
            EpochUpdate {
                epoch: sealed.epoch,
                status,
                root: Some(root),
                part: Some(PartRecord {
                    part: 0,
                    tx_hash: [8; 32],
                    block: 44,
                }),
            },
        )
        .await;
    }
}

const P1: Address = Address([0x11; 20]);
const P2: Address = Address([0x22; 20]);
const STRANGER: Address = Address([0x33; 20]);

/// Epoch 1 committed, epoch 2 sealed only, epoch 3 open with one receipt.
fn epochs_paid() -> [Vec<Paid>; 3] {
    let paid = |payer, payee, amount, nonce| Paid {
        payer,
        payee,
        amount,
        nonce,
    };
    [
        vec![paid(1, P1, 10, 1), paid(1, P2, 20, 1), paid(2, P1, 5, 1)],
        vec![paid(1, P1, 7, 2), paid(2, P2, 1, 1)],
        vec![paid(1, P2, 3, 2)],
    ]
}

async fn start(chain: Option<FixedChain>) -> Server {
    let chain = chain.map(|chain| Arc::new(chain) as Arc<dyn ChainView>);
    start_with(chain, |state| state).await
}

/// The test ledger of [`epochs_paid`] served with `chain`, the state set up by `configure`.
async fn start_with(
    chain: Option<Arc<dyn ChainView>>,
    configure: impl FnOnce(ApiState) -> ApiState,
) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(
        EngineConfig::new(dir.path()),
        Arc::new(
            VerifyPool::new(
                Verifier::new(DOMAIN, VerifyConfig::default()),
                VerifyConfig::default(),
            )
            .expect("verify pool"),
        ),
    )
    .expect("engine");
    for (log_index, (payer, amount)) in [(1u8, 1_000u128), (2, 500)].into_iter().enumerate() {
        let event = FundsEvent {
            payer: payer_of(&key(payer)),
            kind: FundsKind::Deposit,
            amount,
            block: 1,
            log_index: log_index as u64,
        };
        engine
            .funds(event)
            .expect("queued")
            .await
            .expect("answered")
            .expect("deposit applied");
    }
    let mut sealed = Vec::new();
    for (index, paid) in epochs_paid().iter().enumerate() {
        let ack = submit(&engine, &DOMAIN, index as u64 + 1, paid).await;
        assert_eq!(ack.accepted as usize, paid.len(), "{ack:?}");
        if index < 2 {
            let epoch = engine
                .seal_epoch()
                .expect("queued")
                .await
                .expect("answered")
                .expect("sealed");
            sealed.push(epoch);
        }
    }
    commit(&engine, &sealed[0]).await;
    // One session grant (alice's, to session key 7), so the grant routes have one to show.
    durable_grant(&engine, &standing_grant(1, 7, 1_000)).await;

    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("tollgate_api_test_marker_total").increment(3);
    });
    let ready = Arc::new(AtomicBool::new(false));
    let mut state = ApiState::new(engine.reader(), ready.clone(), recorder.handle())
        .with_engine(engine.clone(), DOMAIN)
        .with_x402(X402Config {
            window_nonces: 1024,
            timestamp_skew_ms: 300_000,
            unknown_payers: UnknownPayers::Reject,
            verify: VerifyConfig::default(),
        });
    if let Some(chain) = chain {
        state = state.with_chain(chain);
    }
    let addr = serve(configure(state)).await;
    Server {
        _dir: dir,
        engine,
        addr,
        ready,
        sealed,
        _recorder: recorder,
    }
}

/// `payer`'s grant to session key `session` (seeds): `cap`, valid an hour either side of now, any
/// payee.
fn standing_grant(payer: u8, session: u8, cap: u64) -> SignedGrant {
    Grant {
        domain: DOMAIN,
        payer: payer_of(&key(payer)),
        session: payer_of(&key(session)),
        nonce: 1,
        cap,
        allowance: None,
        valid_from_ms: now_ms() - 3_600_000,
        valid_until_ms: now_ms() + 3_600_000,
        payees: PayeeScope::Any,
    }
    .sign(&key(payer))
}

async fn durable_grant(engine: &Engine, grant: &SignedGrant) {
    engine
        .grant(grant.clone().check(&DOMAIN).expect("a valid grant"))
        .expect("queued")
        .await
        .expect("answered")
        .expect("granted");
}

/// Serves the API on a free loopback port.
async fn serve(state: ApiState) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    addr
}

async fn get(server: &Server, path: &str) -> (u16, Value) {
    let response = reqwest::get(server.url(path)).await.expect("request");
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.expect("a JSON body");
    (status, body)
}

/// A small JSON-schema check: `$ref`, `type` (one or several), `enum`, `pattern`, `required`,
/// `properties` with `additionalProperties: false`, `items`, `minimum`, `maxItems`. Enough for
/// the API's document, strict enough that a renamed or retyped field fails.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .ok_or_else(|| format!("{at}: unsupported $ref {reference}"))?;
        let target = &doc["components"]["schemas"][name];
        if target.is_null() {
            return Err(format!("{at}: $ref to missing schema {name}"));
        }
        return check(doc, target, value, at);
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            other => return Err(format!("{at}: bad type {other}")),
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        if !(types.contains(&actual) || actual == "integer" && types.contains(&"number")) {
            return Err(format!("{at}: {value} is {actual}, schema wants {types:?}"));
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} not in {allowed:?}"));
    }
    if let (Some(pattern), Some(text)) = (
        schema.get("pattern").and_then(Value::as_str),
        value.as_str(),
    ) {
        let regex = regex::Regex::new(pattern).map_err(|e| format!("{at}: {e}"))?;
        if !regex.is_match(text) {
            return Err(format!("{at}: {text:?} does not match {pattern}"));
        }
    }
    if let (Some(minimum), Some(number)) = (
        schema.get("minimum").and_then(Value::as_u64),
        value.as_u64(),
    ) && number < minimum
    {
        return Err(format!("{at}: {number} < minimum {minimum}"));
    }
    if let Value::Object(object) = value {
        let properties = schema.get("properties").and_then(Value::as_object);
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = required.as_str().unwrap_or_default();
            if !object.contains_key(name) {
                return Err(format!("{at}: required field {name} missing"));
            }
        }
        for (name, field) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(field_schema) => check(doc, field_schema, field, &format!("{at}.{name}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{at}: field {name} is not documented"));
                }
                None => {}
            }
        }
    }
    if let Value::Array(items) = value {
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && items.len() as u64 > max
        {
            return Err(format!("{at}: {} items > maxItems {max}", items.len()));
        }
        if let Some(item_schema) = schema.get("items") {
            for (index, item) in items.iter().enumerate() {
                check(doc, item_schema, item, &format!("{at}[{index}]"))?;
            }
        }
    }
    Ok(())
}

/// The schema the document gives for `status` of `GET path_template`.
fn response_schema<'a>(doc: &'a Value, template: &str, status: u16) -> &'a Value {
    let response = &doc["paths"][template]["get"]["responses"][status.to_string()];
    assert!(
        !response.is_null(),
        "{template} does not document status {status}"
    );
    &response["content"]["application/json"]["schema"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_answers_what_the_document_says() {
    let server = start(Some(FixedChain::p1_and_epoch_1())).await;
    server.ready.store(true, Ordering::Release);
    let (status, doc) = get(&server, "/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");

    let alice = payer_of(&key(1));
    let values = BTreeMap::from([
        ("{payer}", alice.to_string()),
        ("{payee}", P1.to_string()),
        ("{epoch}", "1".to_string()),
        ("{session_key}", payer_of(&key(7)).to_string()),
    ]);
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 8, "{paths:?}");
    for (template, item) in paths {
        // The posts (grants, revocations) are exercised with their bodies in their own test.
        if item.get("get").is_none() {
            continue;
        }
        let mut path = template.clone();
        for (name, value) in &values {
            path = path.replace(name, value);
        }
        assert!(!path.contains('{'), "no test value for {template}");
        let query: Vec<String> = item["get"]["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "query" && p["required"] == true)
            .map(|p| {
                let name = p["name"].as_str().expect("name");
                format!("{name}={}", values[format!("{{{name}}}").as_str()])
            })
            .collect();
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        let response = reqwest::get(server.url(&path)).await.expect("request");
        assert_eq!(response.status().as_u16(), 200, "GET {path}");
        let content = &item["get"]["responses"]["200"]["content"];
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if content.get("application/json").is_some() {
            assert!(content_type.starts_with("application/json"), "{path}");
            let body: Value = response.json().await.expect("JSON");
            check(&doc, response_schema(&doc, template, 200), &body, template)
                .unwrap_or_else(|problem| panic!("GET {path}: {problem}\n{body:#}"));
        } else if content.get("application/x-ndjson").is_some() {
            assert!(content_type.starts_with("application/x-ndjson"), "{path}");
            let text = response.text().await.expect("text");
            let schema = &content["application/x-ndjson"]["schema"];
            assert!(text.lines().count() > 0, "{path}: no lines");
            for line in text.lines() {
                let value: Value = serde_json::from_str(line).expect("a JSON line");
                check(&doc, schema, &value, template)
                    .unwrap_or_else(|problem| panic!("GET {path}: {problem}\n{line}"));
            }
        } else {
            assert!(content_type.starts_with("text/plain"), "{path}");
            let text = response.text().await.expect("text");
            assert!(
                text.contains("tollgate_api_test_marker_total 3"),
                "{path}: {text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_and_epochs_agree_with_an_independent_total() {
    let server = start(Some(FixedChain::p1_and_epoch_1())).await;
    server.ready.store(true, Ordering::Release);
    let paid = epochs_paid();
    let total = |filter: &dyn Fn(&Paid) -> bool, epochs: &[Vec<Paid>]| -> u128 {
        epochs
            .iter()
            .flatten()
            .filter(|p| filter(p))
            .map(|p| u128::from(p.amount))
            .sum()
    };

    let alice = payer_of(&key(1));
    let (status, body) = get(&server, &format!("/v1/payers/{alice}")).await;
    assert_eq!(status, 200, "{body}");
    let view: PayerView = serde_json::from_value(body).expect("payer view");
    let alice_paid = |p: &Paid| p.payer == 1;
    assert_eq!(view.deposited, 1_000);
    assert_eq!(view.settled, total(&alice_paid, &paid[..1]));
    assert_eq!(view.pending, total(&alice_paid, &paid[1..]));
    assert_eq!(
        view.available,
        1_000 - total(&alice_paid, &paid[..]),
        "{view:?}"
    );
    let alice_receipts = paid.iter().flatten().filter(|p| alice_paid(p)).count();
    assert_eq!(view.receipts, alice_receipts as u64);
    assert_eq!(view.channel_count, 2);
    let p1 = &view.channels[0];
    assert_eq!(p1.payee, P1.to_string());
    assert_eq!(
        p1.cumulative,
        total(&|p: &Paid| alice_paid(p) && p.payee == P1, &paid[..])
    );
    assert_eq!(p1.highest_nonce, Some(2));

    let (status, body) = get(&server, &format!("/v1/payees/{P1}")).await;
    assert_eq!(status, 200, "{body}");
    let view: PayeeView = serde_json::from_value(body).expect("payee view");
    let to_p1 = |p: &Paid| p.payee == P1;
    assert_eq!(view.credited, total(&to_p1, &paid[..]));
    assert_eq!(view.settled, total(&to_p1, &paid[..1]));
    assert_eq!(view.pending, total(&to_p1, &paid[1..]));
    assert_eq!(view.withdrawable, Some(12));
    assert_eq!(view.withdrawable_source, WithdrawableSource::Chain);
    // The chain view fails for P2: the ledger figures still answer.
    let (_, body) = get(&server, &format!("/v1/payees/{P2}")).await;
    let view: PayeeView = serde_json::from_value(body).expect("payee view");
    assert_eq!(
        (view.withdrawable, view.withdrawable_source),
        (None, WithdrawableSource::ChainError)
    );

    let (status, body) = get(&server, "/v1/epochs?limit=10").await;
    assert_eq!(status, 200, "{body}");
    let list: EpochList = serde_json::from_value(body).expect("epoch list");
    let numbers: Vec<(u64, &str)> = list
        .epochs
        .iter()
        .map(|e| (e.epoch, e.status.as_str()))
        .collect();
    assert_eq!(
        numbers,
        [(3, "open"), (2, "sealed"), (1, "committed")],
        "newest first"
    );
    for (epoch, paid) in list.epochs.iter().rev().zip(&paid) {
        let sum: u128 = paid.iter().map(|p| u128::from(p.amount)).sum();
        assert_eq!(
            (epoch.debit_total, epoch.credit_total),
            (sum, sum),
            "{epoch:?}"
        );
        assert_eq!(epoch.receipts, paid.len() as u64);
    }
    let (_, body) = get(&server, "/v1/epochs?limit=2").await;
    let list: EpochList = serde_json::from_value(body).expect("epoch list");
    assert_eq!(
        list.epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        [3, 2]
    );

    let (status, body) = get(&server, "/v1/epochs/1").await;
    assert_eq!(status, 200, "{body}");
    let epoch: EpochView = serde_json::from_value(body).expect("epoch view");
    let sealed = &server.sealed[0];
    let root = EpochTree::from_sealed(sealed).expect("leaves").root();
    assert_eq!(epoch.root, Some(format!("0x{}", hex::encode(root))));
    assert_eq!(epoch.tx_hash, Some(format!("0x{}", "08".repeat(32))));
    assert_eq!(epoch.block, Some(44));
    assert_eq!(epoch.leaves, Some(sealed.leaves.len() as u64));
    assert_eq!(epoch.debit_count, Some(2), "alice and bob paid");
    assert_eq!(epoch.credit_count, Some(2), "P1 and P2 were paid");
    let (_, body) = get(&server, "/v1/epochs/3").await;
    let open: EpochView = serde_json::from_value(body).expect("epoch view");
    assert_eq!((open.status.as_str(), open.receipts), ("open", 1));

    server.engine.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_documented_error_and_the_server_keeps_serving() {
    let server = start(None).await;
    let (status, doc) = get(&server, "/openapi.json").await;
    assert_eq!(status, 200);
    let alice = payer_of(&key(1));

    // Not ready: ledger routes and /readyz answer 503; /healthz is up.
    for (path, template) in [
        ("/readyz".to_string(), "/readyz"),
        (format!("/v1/payers/{alice}"), "/v1/payers/{payer}"),
        ("/v1/epochs".to_string(), "/v1/epochs"),
    ] {
        let (status, body) = get(&server, &path).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("not_ready")),
            "{path}"
        );
        check(&doc, response_schema(&doc, template, 503), &body, &path).expect("error schema");
    }
    assert_eq!(get(&server, "/healthz").await.0, 200);
    server.ready.store(true, Ordering::Release);
    assert_eq!(get(&server, "/readyz").await.0, 200);

    let unknown_payer = payer_of(&key(9));
    let proof_path = |epoch: &str, payer: &str, payee: &str| {
        format!("/v1/epochs/{epoch}/proof?payer={payer}&payee={payee}")
    };
    let (alice_hex, p1_hex) = (alice.to_string(), P1.to_string());
    let proof_template = Some("/v1/epochs/{epoch}/proof");
    let cases: [(String, Option<&str>, u16, &str); 22] = [
        (
            "/v1/payers/zz".into(),
            Some("/v1/payers/{payer}"),
            400,
            "malformed_payer",
        ),
        (
            format!("/v1/payers/{}", &alice.to_string()[2..]),
            Some("/v1/payers/{payer}"),
            400,
            "malformed_payer",
        ),
        (
            format!("/v1/payers/{unknown_payer}"),
            Some("/v1/payers/{payer}"),
            404,
            "unknown_payer",
        ),
        (
            format!("/v1/payees/{}", hex::encode(P1.0)),
            Some("/v1/payees/{payee}"),
            400,
            "malformed_address",
        ),
        (
            "/v1/payees/0x1234".into(),
            Some("/v1/payees/{payee}"),
            400,
            "malformed_address",
        ),
        (
            format!("/v1/payees/{STRANGER}"),
            Some("/v1/payees/{payee}"),
            404,
            "unknown_payee",
        ),
        (
            "/v1/epochs?limit=0".into(),
            Some("/v1/epochs"),
            400,
            "bad_query",
        ),
        (
            "/v1/epochs?limit=many".into(),
            Some("/v1/epochs"),
            400,
            "bad_query",
        ),
        (
            "/v1/epochs/x".into(),
            Some("/v1/epochs/{epoch}"),
            400,
            "malformed_epoch",
        ),
        (
            "/v1/epochs/4".into(),
            Some("/v1/epochs/{epoch}"),
            404,
            "unknown_epoch",
        ),
        (
            "/v1/epochs/0".into(),
            Some("/v1/epochs/{epoch}"),
            404,
            "unknown_epoch",
        ),
        ("/v2/anything".into(), None, 404, "unknown_route"),
        (
            proof_path("x", &alice_hex, &p1_hex),
            proof_template,
            400,
            "malformed_epoch",
        ),
        (
            proof_path("1", "zz", &p1_hex),
            proof_template,
            400,
            "malformed_payer",
        ),
        (
            proof_path("1", &alice_hex, &p1_hex[2..]),
            proof_template,
            400,
            "malformed_address",
        ),
        (
            format!("/v1/epochs/1/proof?payer={alice_hex}"),
            proof_template,
            400,
            "bad_query",
        ),
        (
            proof_path("4", &alice_hex, &p1_hex),
            proof_template,
            404,
            "unknown_epoch",
        ),
        // Without a chain nobody can say whether committed epoch 1 is final onchain.
        (
            proof_path("1", &alice_hex, &p1_hex),
            proof_template,
            503,
            "finality_unknown",
        ),
        // A channel with no leaf has no proof, final or not: no chain read needed.
        (
            proof_path("1", &alice_hex, &STRANGER.to_string()),
            proof_template,
            404,
            "unknown_leaf",
        ),
        (
            proof_path("2", &alice_hex, &p1_hex),
            proof_template,
            409,
            "epoch_not_committed",
        ),
        (
            proof_path("3", &alice_hex, &p1_hex),
            proof_template,
            409,
            "epoch_not_committed",
        ),
        (
            proof_path("0", &alice_hex, &p1_hex),
            proof_template,
            404,
            "unknown_epoch",
        ),
    ];
    for (path, template, want_status, want_code) in cases {
        let (status, body) = get(&server, &path).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (want_status, Some(want_code)),
            "GET {path}: {body}"
        );
        let schema = match template {
            Some(template) => response_schema(&doc, template, status),
            None => &serde_json::json!({ "$ref": "#/components/schemas/Error" }),
        };
        check(&doc, schema, &body, &path).unwrap_or_else(|p| panic!("{p}"));
        assert!(!body["message"].as_str().unwrap_or_default().is_empty());
    }
    let response = reqwest::Client::new()
        .post(server.url("/v1/epochs"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 405);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"], "method_not_allowed");

    // Everyone else is still served.
    assert_eq!(get(&server, &format!("/v1/payers/{alice}")).await.0, 200);
}

fn server_args(server: &Server, json: bool) -> ServerArgs {
    ServerArgs {
        server: format!("http://{}", server.addr),
        json,
        caller: CallerArgs::default(),
        domain: DomainArgs::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_prints_tables_or_json_and_exits_with_the_documented_codes() {
    let server = start(None).await;
    let alice = payer_of(&key(1));
    let balance = |payer: String, json| {
        QueryCommand::Balance(BalanceArgs {
            payer,
            server: server_args(&server, json),
        })
    };

    // Not ready yet: "retry later", like a server that is down.
    let error = cli::execute(&balance(alice.to_string(), false))
        .await
        .expect_err("not ready");
    assert_eq!(error.exit_code(), EXIT_UNREACHABLE, "{error}");
    server.ready.store(true, Ordering::Release);

    let table = cli::execute(&balance(alice.to_string(), false))
        .await
        .expect("balance");
    assert!(
        table.contains(&format!("payer                 {alice}")),
        "{table}"
    );
    assert!(table.contains("available             960"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("PAYEE")), "{table}");

    let json = cli::execute(&balance(alice.to_string(), true))
        .await
        .expect("balance");
    let view: PayerView = serde_json::from_str(&json).expect("the API's JSON");
    assert_eq!(view.available, 960);

    let error = cli::execute(&balance(payer_of(&key(9)).to_string(), false))
        .await
        .expect_err("unknown");
    assert!(matches!(error, QueryError::NotFound { ref code, .. } if code == "unknown_payer"));
    assert_eq!(error.exit_code(), EXIT_NOT_FOUND);

    let error = cli::execute(&balance("not-hex".into(), false))
        .await
        .expect_err("malformed");
    assert_eq!(error.exit_code(), EXIT_ERROR);

    let payee = cli::execute(&QueryCommand::Payee(PayeeArgs {
        address: P2.to_string(),
        server: server_args(&server, false),
    }))
    .await
    .expect("payee");
    assert!(payee.contains("credited      24"), "{payee}");
    assert!(
        payee.contains("withdrawable  - (not configured)"),
        "{payee}"
    );

    let epochs = cli::execute(&QueryCommand::Epochs(EpochsArgs {
        limit: 5,
        server: server_args(&server, false),
    }))
    .await
    .expect("epochs");
    let lines: Vec<&str> = epochs.lines().collect();
    assert_eq!(lines.len(), 4, "{epochs}");
    assert!(lines[0].starts_with("EPOCH  STATUS"), "{epochs}");
    assert!(lines[3].contains("committed"), "{epochs}");
    assert!(
        lines[3].contains(&format!("0x{}", "08".repeat(32))),
        "{epochs}"
    );
}

/// What the test ledger owes on `(payer, payee)` over the given epochs, totalled independently.
fn cumulative(epochs: &[Vec<Paid>], payer: u8, payee: Address) -> u128 {
    epochs
        .iter()
        .flatten()
        .filter(|p| p.payer == payer && p.payee == payee)
        .map(|p| u128::from(p.amount))
        .sum()
}

fn hash_of(text: &str) -> alloy::primitives::B256 {
    text.parse().expect("a 0x hash")
}

async fn fetch_proof(server: &Server, epoch: u64, payer: u8, payee: Address) -> (u16, Value) {
    let payer = payer_of(&key(payer));
    get(
        server,
        &format!("/v1/epochs/{epoch}/proof?payer={payer}&payee={payee}"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_of_final_epochs_verify_against_their_root_and_tampering_fails() {
    let server = start(Some(FixedChain {
        withdrawable: BTreeMap::new(),
        final_epochs: BTreeMap::from([(1, true), (2, true)]),
    }))
    .await;
    server.ready.store(true, Ordering::Release);
    let paid = epochs_paid();
    // Epoch 2 committed too, so a channel that moved in epoch 1 only has no leaf in it.
    commit(&server.engine, &server.sealed[1]).await;

    let channels = [
        (1u8, P1, 1u64),
        (1, P2, 1),
        (2, P1, 1),
        (1, P1, 2),
        (2, P2, 2),
    ];
    for (payer, payee, epoch) in channels {
        let (status, body) = fetch_proof(&server, epoch, payer, payee).await;
        assert_eq!(status, 200, "{body}");
        let view: ProofView = serde_json::from_value(body).expect("proof view");
        let expected = cumulative(&paid[..epoch as usize], payer, payee);
        assert_eq!(view.cumulative, expected, "all-time cumulative at the seal");
        let leaf = Leaf {
            payer: payer_of(&key(payer)),
            payee,
            cumulative: view.cumulative,
        };
        assert_eq!(hash_of(&view.leaf), leaf_hash(epoch, &leaf));
        let record = server
            .engine
            .reader()
            .epoch(epoch)
            .expect("read")
            .expect("epoch");
        let root = alloy::primitives::B256::from(record.root.expect("root"));
        assert_eq!(hash_of(&view.root), root);
        let proof: Vec<_> = view.proof.iter().map(|h| hash_of(h)).collect();
        assert!(merkle::verify(root, leaf_hash(epoch, &leaf), &proof));

        let more = Leaf {
            cumulative: leaf.cumulative + 1,
            ..leaf
        };
        assert!(
            !merkle::verify(root, leaf_hash(epoch, &more), &proof),
            "a tampered cumulative fails"
        );
        assert!(
            !merkle::verify(root, leaf_hash(epoch + 1, &leaf), &proof),
            "another epoch fails"
        );
        if let Some(first) = proof.first() {
            let mut bad = proof.clone();
            bad[0] = alloy::primitives::B256::from(first.0.map(|b| b ^ 1));
            assert!(!merkle::verify(root, leaf_hash(epoch, &leaf), &bad));
        }
    }
    // (alice, P2) did not move in epoch 2: its leaf stays in epoch 1.
    let (status, body) = fetch_proof(&server, 2, 1, P2).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_leaf"))
    );
    // Asking again for the cached epoch answers the same.
    let (_, first) = fetch_proof(&server, 1, 1, P1).await;
    let (_, again) = fetch_proof(&server, 1, 1, P1).await;
    assert_eq!(first, again);

    // The CLI shows the same proof as a table and as the API's JSON; no proof is exit code 1.
    let proof_command = |epoch, payee: Address, json| {
        QueryCommand::Proof(ProofArgs {
            epoch,
            payer: payer_of(&key(1)).to_string(),
            payee: payee.to_string(),
            server: server_args(&server, json),
        })
    };
    let json = cli::execute(&proof_command(1, P1, true))
        .await
        .expect("proof");
    let view: ProofView = serde_json::from_str(&json).expect("the API's JSON");
    assert_eq!(serde_json::to_value(&view).expect("json"), first);
    let table = cli::execute(&proof_command(1, P1, false))
        .await
        .expect("proof");
    assert!(
        table.contains(&format!("cumulative  {}", view.cumulative)),
        "{table}"
    );
    assert!(
        table.contains(&format!("root        {}", view.root)),
        "{table}"
    );
    for hash in &view.proof {
        assert!(table.contains(hash.as_str()), "{table}");
    }
    for (epoch, payee, code) in [(3, P1, "epoch_not_committed"), (2, P2, "unknown_leaf")] {
        let error = cli::execute(&proof_command(epoch, payee, false))
            .await
            .expect_err("no proof");
        assert!(
            matches!(error, QueryError::NotFound { code: ref c, .. } if c == code),
            "{error:?}"
        );
        assert_eq!(error.exit_code(), EXIT_NOT_FOUND);
    }

    server.engine.shutdown().expect("clean shutdown");
}

/// A Settlement deployed on a fresh anvil with `params(&anvil)`, payers 1, 2 and 3 funded with 10,000
/// each onchain, and an engine on a temp dir whose funds loop has caught up with those deposits.
struct Chained {
    anvil: alloy::node_bindings::AnvilInstance,
    deployed: tollgate_settle::DeployedAddresses,
    domain: Domain,
    payers: Vec<PayerKey>,
    dir: tempfile::TempDir,
    engine: Engine,
}

async fn chained(
    params: impl FnOnce(&alloy::node_bindings::AnvilInstance) -> tollgate_settle::DeployParams,
) -> Chained {
    use tollgate_settle::devchain::{FundParams, fund_payers};
    use tollgate_settle::epoch::FundsLoop;
    use tollgate_settle::watcher::{WatchConfig, Watcher};

    let anvil = common::spawn_anvil();
    let endpoint = anvil.endpoint();
    let deployed = common::deploy(&anvil, &params(&anvil)).await;
    let domain = Domain {
        chain_id: deployed.chain_id,
        contract: Address(deployed.settlement.0.0),
    };
    let payers: Vec<PayerKey> = (1..=3).map(|seed| payer_of(&key(seed))).collect();
    let funding = FundParams {
        token: deployed.token,
        settlement: deployed.settlement,
        amount_each: 10_000,
        mint: true,
    };
    fund_payers(&endpoint, common::dev_key(&anvil, 1), &payers, &funding)
        .await
        .expect("funded");

    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(
        EngineConfig::new(dir.path()),
        Arc::new(
            VerifyPool::new(
                Verifier::new(domain, VerifyConfig::default()),
                VerifyConfig::default(),
            )
            .expect("verify pool"),
        ),
    )
    .expect("engine");
    let watcher = Watcher::connect(
        &endpoint,
        deployed.chain_id,
        deployed.settlement,
        WatchConfig {
            confirmations: 0,
            blocks_per_poll_max: 1_000,
        },
    )
    .await
    .expect("watcher");
    let funds = FundsLoop::new(engine.clone(), watcher, deployed.block, 10);
    let mut caught_up = false;
    for _ in 0..100 {
        if funds.step().await.expect("funds step") {
            caught_up = true;
            break;
        }
    }
    assert!(caught_up, "the funds loop never caught up");
    Chained {
        anvil,
        deployed,
        domain,
        payers,
        dir,
        engine,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_from_the_route_is_accepted_by_the_contract_once_the_epoch_is_final() {
    use alloy::providers::Provider;
    use tollgate_settle::chain::{ContractReader, DeployParams};
    use tollgate_settle::epoch::{EpochConfig, EpochLoop};
    use tollgate_settle::submitter::{SubmitConfig, Submitter};

    let window_secs = 60;
    let setup = chained(|anvil| DeployParams {
        challenge_window_secs: window_secs,
        withdrawal_delay_secs: 600,
        arbiter: Some(anvil.addresses()[9]),
        ..DeployParams::dev()
    })
    .await;
    let Chained {
        anvil,
        deployed,
        domain,
        payers,
        dir,
        engine,
    } = setup;
    let endpoint = anvil.endpoint();

    let paid = |payer, payee, amount, nonce| Paid {
        payer,
        payee,
        amount,
        nonce,
    };
    let receipts = vec![
        paid(1, P1, 100, 1),
        paid(1, P2, 200, 2),
        paid(2, P1, 300, 1),
        paid(3, P2, 50, 1),
        paid(3, STRANGER, 25, 2),
    ];
    let ack = submit(&engine, &domain, 1, &receipts).await;
    assert_eq!(ack.accepted as usize, receipts.len(), "{ack:?}");

    let submitter = Submitter::connect(
        &endpoint,
        deployed.chain_id,
        deployed.settlement,
        common::dev_key(&anvil, 0),
        SubmitConfig {
            receipt_poll_ms: 10,
            backoff_initial_ms: 10,
            ..SubmitConfig::default()
        },
    )
    .await
    .expect("submitter");
    let epochs = EpochLoop::new(engine.clone(), submitter, EpochConfig::default());
    assert_eq!(epochs.seal().await.expect("sealed"), 1);
    epochs.commit_backlog().await.expect("committed");

    let contract = ContractReader::connect(&endpoint, deployed.chain_id, deployed.settlement)
        .await
        .expect("contract reader");
    let recorder = PrometheusBuilder::new().build_recorder();
    let ready = Arc::new(AtomicBool::new(true));
    // Every payee answer reads the contract, so the chain going away shows at once.
    let state = ApiState::new(engine.reader(), ready.clone(), recorder.handle())
        .with_chain(Arc::new(contract.clone()))
        .with_withdrawable_ttl(std::time::Duration::ZERO);
    let server = Server {
        _dir: dir,
        engine,
        addr: serve(state).await,
        ready,
        sealed: Vec::new(),
        _recorder: recorder,
    };

    // Committed but inside its challenge window: the arbiter can still void it, so no proof yet.
    for p in &receipts {
        let (status, body) = fetch_proof(&server, 1, p.payer, p.payee).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (409, Some("epoch_not_final")),
            "{body}"
        );
    }
    let chain =
        alloy::providers::ProviderBuilder::new().connect_http(endpoint.parse().expect("url"));
    let _: serde_json::Value = chain
        .raw_request("evm_increaseTime".into(), (window_secs,))
        .await
        .expect("increase time");
    let _: serde_json::Value = chain
        .raw_request("evm_mine".into(), ())
        .await
        .expect("mine");

    for p in &receipts {
        let (status, body) = fetch_proof(&server, 1, p.payer, p.payee).await;
        assert_eq!(status, 200, "{body}");
        let view: ProofView = serde_json::from_value(body).expect("proof view");
        assert_eq!(view.cumulative, u128::from(p.amount));
        let (leaf, proof) = view.decode().expect("a well-formed proof");
        assert_eq!((leaf.payer, leaf.payee), (payer_of(&key(p.payer)), p.payee));
        assert!(
            contract.verify_leaf(1, &leaf, &proof).await.expect("call"),
            "the contract accepts the route's proof"
        );
        let more = Leaf {
            cumulative: leaf.cumulative + 1,
            ..leaf
        };
        assert!(
            !contract.verify_leaf(1, &more, &proof).await.expect("call"),
            "the contract refuses a tampered cumulative"
        );
    }

    // The chain view reads the contract: past the window, P1's credits are withdrawable.
    let (status, body) = get(&server, &format!("/v1/payees/{P1}")).await;
    assert_eq!(status, 200, "{body}");
    let view: PayeeView = serde_json::from_value(body).expect("payee view");
    assert_eq!(view.withdrawable_source, WithdrawableSource::Chain);
    assert_eq!((view.settled, view.withdrawable), (400, Some(400)));
    assert_eq!(contract.withdrawable(P1).await.expect("call"), 400);
    assert_eq!(
        contract.available(&payers[0]).await.expect("call"),
        10_000 - 300
    );
    // Nothing settled to a payee the contract never credited.
    assert_eq!(
        contract
            .withdrawable(Address([0x44; 20]))
            .await
            .expect("call"),
        0
    );

    // A chain that goes away costs the payee answer its withdrawable figure, nothing else.
    drop(anvil);
    let (status, body) = get(&server, &format!("/v1/payees/{P1}")).await;
    assert_eq!(status, 200, "{body}");
    let view: PayeeView = serde_json::from_value(body).expect("payee view");
    assert_eq!(
        (view.withdrawable, view.withdrawable_source),
        (None, WithdrawableSource::ChainError)
    );
    server.engine.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epoch_answers_come_from_the_record_without_reading_the_epoch() {
    let server = start(Some(FixedChain::epoch_1())).await;
    server.ready.store(true, Ordering::Release);
    let reader = server.engine.reader();
    let read_before = reader.sealed_epochs_read();

    // The counts come with the epoch record, in the list as in the single answer.
    for _ in 0..3 {
        for epoch in [1, 2] {
            let (status, body) = get(&server, &format!("/v1/epochs/{epoch}")).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                (&body["debit_count"], &body["credit_count"]),
                (&Value::from(2), &Value::from(2)),
                "epoch {epoch}: {body}"
            );
        }
    }
    assert_eq!(
        reader.sealed_epochs_read(),
        read_before,
        "epoch answers read whole epochs"
    );
    let (_, body) = get(&server, "/v1/epochs").await;
    let counts: Vec<(&Value, &Value)> = body["epochs"]
        .as_array()
        .expect("epochs")
        .iter()
        .map(|epoch| (&epoch["debit_count"], &epoch["credit_count"]))
        .collect();
    let two = Value::from(2);
    assert_eq!(
        counts,
        [(&Value::Null, &Value::Null), (&two, &two), (&two, &two)],
        "open, then sealed epochs 2 and 1: {body}"
    );
    server.engine.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_request_for_a_missing_leaf_does_not_read_the_epoch() {
    let server = start(Some(FixedChain::epoch_1())).await;
    server.ready.store(true, Ordering::Release);
    let reader = server.engine.reader();
    let read_before = reader.sealed_epochs_read();

    // Bob never paid P2 in epoch 1: no leaf, found out without reading the epoch, every time.
    for _ in 0..3 {
        let (status, body) = fetch_proof(&server, 1, 2, P2).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("unknown_leaf")),
            "{body}"
        );
    }
    assert_eq!(
        reader.sealed_epochs_read(),
        read_before,
        "a proof request for a missing leaf read the whole epoch"
    );
    // A proof reads the epoch once to build its tree; the tree is kept.
    for _ in 0..2 {
        let (status, body) = fetch_proof(&server, 1, 1, P1).await;
        assert_eq!(status, 200, "{body}");
        let (status, _) = fetch_proof(&server, 1, 2, P2).await;
        assert_eq!(status, 404);
    }
    assert_eq!(reader.sealed_epochs_read(), read_before + 1);
    server.engine.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payee_answers_reuse_a_recent_contract_read() {
    use tollgate_settle::chain::{ContractReader, DeployParams};

    let anvil = common::spawn_anvil();
    let deployed = common::deploy(&anvil, &DeployParams::dev()).await;
    let proxy = common::RpcProxy::start(anvil.endpoint(), |_, _| false).await;
    let contract = ContractReader::connect(&proxy.url, deployed.chain_id, deployed.settlement)
        .await
        .expect("contract reader");
    // A TTL far longer than the test, so that what is checked is the reuse, not the clock.
    let server = start_with(Some(Arc::new(contract)), |state| {
        state.with_withdrawable_ttl(std::time::Duration::from_secs(3_600))
    })
    .await;
    server.ready.store(true, Ordering::Release);

    let calls_before = proxy.calls("eth_call");
    for _ in 0..3 {
        let (status, body) = get(&server, &format!("/v1/payees/{P1}")).await;
        assert_eq!(status, 200, "{body}");
        let view: PayeeView = serde_json::from_value(body).expect("payee view");
        assert_eq!(
            (view.withdrawable, view.withdrawable_source),
            (Some(0), WithdrawableSource::Chain),
            "nothing was committed onchain"
        );
    }
    assert_eq!(
        proxy.calls("eth_call") - calls_before,
        1,
        "one contract read for three answers"
    );
    server.engine.shutdown().expect("clean shutdown");
}

/// One part of an epoch as the API lists it.
fn part_of(body: &Value, part: u64) -> &Value {
    body["parts"]
        .as_array()
        .unwrap_or_else(|| panic!("no parts list: {body}"))
        .iter()
        .find(|entry| entry["part"] == part)
        .unwrap_or_else(|| panic!("part {part} missing: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_part_is_recorded_as_it_lands_across_runs() {
    use alloy::primitives::{B256, U256};
    use alloy::providers::Provider;
    use tollgate_settle::chain::{DeployParams, wallet_provider};
    use tollgate_settle::contract::Settlement;
    use tollgate_settle::epoch::{EpochConfig, EpochError, EpochLoop};
    use tollgate_settle::submitter::{SubmitConfig, SubmitError, Submitter};

    let Chained {
        anvil,
        deployed,
        domain,
        payers: _,
        dir,
        engine,
    } = chained(|_| DeployParams::dev()).await;
    let endpoint = anvil.endpoint();
    // Three debits and three credits, two entries a part: parts 0, 1 and 2.
    let paid = |payer, payee, amount, nonce| Paid {
        payer,
        payee,
        amount,
        nonce,
    };
    let receipts = vec![
        paid(1, P1, 100, 1),
        paid(2, P2, 200, 1),
        paid(3, STRANGER, 300, 1),
    ];
    let ack = submit(&engine, &domain, 1, &receipts).await;
    assert_eq!(ack.accepted as usize, receipts.len(), "{ack:?}");
    let config = SubmitConfig {
        part_entries_max: 2,
        attempts_max: 2,
        receipt_poll_ms: 10,
        backoff_initial_ms: 10,
        ..SubmitConfig::default()
    };
    // The first run's node takes one transaction, then refuses every other.
    let proxy = common::RpcProxy::start(endpoint.clone(), |method, earlier| {
        method == "eth_sendRawTransaction" && earlier >= 1
    })
    .await;
    let connect = |url: String| {
        let config = config.clone();
        let operator = common::dev_key(&anvil, 0);
        async move {
            Submitter::connect(
                &url,
                deployed.chain_id,
                deployed.settlement,
                operator,
                config,
            )
            .await
            .expect("submitter")
        }
    };
    let first_run = EpochLoop::new(
        engine.clone(),
        connect(proxy.url.clone()).await,
        EpochConfig::default(),
    );
    assert_eq!(first_run.seal().await.expect("sealed"), 1);

    // An earlier run (one that crashed before it could record anything) sent part 0.
    let sealed = engine
        .reader()
        .sealed_epoch(1)
        .expect("read")
        .expect("epoch 1");
    let root = EpochTree::from_sealed(&sealed).expect("leaves").root();
    let debits: Vec<_> = sealed.debits[..2]
        .iter()
        .map(|(payer, amount)| Settlement::Debit {
            payerKey: B256::from(payer.0),
            amount: U256::from(*amount),
        })
        .collect();
    let operator =
        wallet_provider(&endpoint, common::dev_key(&anvil, 0)).expect("operator provider");
    let part0 = Settlement::new(deployed.settlement, operator.clone())
        .commitEpoch(1, 0, 3, root, debits, Vec::new())
        .send()
        .await
        .expect("part 0 sent")
        .get_receipt()
        .await
        .expect("part 0 mined");
    assert!(part0.status(), "part 0 landed");

    // This run sends part 1, then the node refuses part 2: the epoch is submitted, not committed.
    match first_run.commit_backlog().await {
        Err(EpochError::Submit(SubmitError::Unavailable { .. })) => {}
        other => panic!("expected the chain to be unavailable, got {other:?}"),
    }
    let recorder = PrometheusBuilder::new().build_recorder();
    let ready = Arc::new(AtomicBool::new(true));
    let server = Server {
        addr: serve(ApiState::new(
            engine.reader(),
            ready.clone(),
            recorder.handle(),
        ))
        .await,
        _dir: dir,
        engine,
        ready,
        sealed: Vec::new(),
        _recorder: recorder,
    };
    let (status, body) = get(&server, "/v1/epochs/1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "submitted", "{body}");
    assert_eq!(body["parts"].as_array().map(Vec::len), Some(1), "{body}");
    let part1 = part_of(&body, 1).clone();
    assert_eq!(
        (&body["tx_hash"], &body["block"]),
        (&part1["tx_hash"], &part1["block"]),
        "tx_hash and block are the last part's"
    );

    // A restart on a healthy node finishes the commit and fills in the part it never saw.
    let second_run = EpochLoop::new(
        server.engine.clone(),
        connect(endpoint.clone()).await,
        EpochConfig::default(),
    );
    second_run.commit_backlog().await.expect("committed");
    let (_, body) = get(&server, "/v1/epochs/1").await;
    assert_eq!(body["status"], "committed", "{body}");
    assert_eq!(body["parts"].as_array().map(Vec::len), Some(3), "{body}");
    assert_eq!(
        part_of(&body, 0)["tx_hash"],
        format!("{}", part0.transaction_hash),
        "{body}"
    );
    assert_eq!(
        part_of(&body, 0)["block"],
        part0.block_number.expect("block")
    );
    assert_eq!(
        part_of(&body, 1),
        &part1,
        "part 1 as the first run recorded it"
    );
    let part2 = part_of(&body, 2);
    assert_eq!(
        (&body["tx_hash"], &body["block"]),
        (&part2["tx_hash"], &part2["block"]),
        "tx_hash and block are the last part's"
    );
    for part in 1..=2 {
        let entry = part_of(&body, part);
        let hash: B256 = entry["tx_hash"]
            .as_str()
            .expect("a hash")
            .parse()
            .expect("a 0x hash");
        let receipt = operator
            .get_transaction_receipt(hash)
            .await
            .expect("receipt read")
            .expect("the recorded transaction is onchain");
        assert!(receipt.status(), "part {part} succeeded");
        assert_eq!(entry["block"], receipt.block_number.expect("block"));
    }
    server.engine.shutdown().expect("clean shutdown");
}

const OPERATOR_TOKEN: &str = "operator-token-0123456789abcdef";
const AUDITOR_TOKEN: &str = "auditor-token-0123456789abcdef";

fn closed_access() -> ApiAccess {
    ApiAccess::new(
        vec![
            ApiToken::new("ops", vec![ApiScope::Operator], OPERATOR_TOKEN).expect("token"),
            ApiToken::new("audit", vec![ApiScope::Auditor], AUDITOR_TOKEN).expect("token"),
        ],
        DOMAIN,
        300_000,
    )
}

/// The status of `GET path` with `headers`.
async fn status_with(server: &Server, path: &str, headers: &[(&str, String)]) -> u16 {
    let mut request = reqwest::Client::new().get(server.url(path));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.expect("request").status().as_u16()
}

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {token}"))]
}

fn signed_by(payer: u8, domain: &Domain, at_ms: u64, path: &str) -> Vec<(&'static str, String)> {
    payer_request_headers(&key(payer), domain, at_ms, "GET", path).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_configured_only_known_callers_read_and_each_only_its_own() {
    let server = start_with(
        Some(Arc::new(FixedChain::p1_and_epoch_1()) as Arc<dyn ChainView>),
        |state| state.with_access(closed_access()),
    )
    .await;
    server.ready.store(true, Ordering::Release);
    let alice = payer_of(&key(1));
    let bob = payer_of(&key(2));
    let alice_balance = format!("/v1/payers/{alice}");
    let bob_balance = format!("/v1/payers/{bob}");
    let payee = format!("/v1/payees/{P1}");
    let alice_proof = format!("/v1/epochs/1/proof?payer={alice}&payee={P1}");
    let bob_proof = format!("/v1/epochs/1/proof?payer={bob}&payee={P1}");
    let ledger_routes = [
        alice_balance.as_str(),
        bob_balance.as_str(),
        payee.as_str(),
        "/v1/epochs",
        "/v1/epochs/1",
        alice_proof.as_str(),
    ];

    for open in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(status_with(&server, open, &[]).await, 200, "{open}");
    }
    for path in ledger_routes {
        assert_eq!(status_with(&server, path, &[]).await, 401, "nobody: {path}");
        for wrong in [
            bearer("not-a-configured-token-at-all"),
            vec![("authorization", "Basic b3A6b3A=".into())],
        ] {
            assert_eq!(
                status_with(&server, path, &wrong).await,
                401,
                "{wrong:?}: {path}"
            );
        }
        assert_eq!(
            status_with(&server, path, &bearer(OPERATOR_TOKEN)).await,
            200,
            "operator: {path}"
        );
    }
    let (_, refused) = {
        let response = reqwest::get(server.url("/v1/epochs"))
            .await
            .expect("request");
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().expect("ascii").to_owned());
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer realm=\"tollgate\", Tollgate-Payer")
        );
        (
            response.status(),
            response.json::<Value>().await.expect("JSON"),
        )
    };
    assert_eq!(refused["error"], "unauthenticated");

    let auditor = bearer(AUDITOR_TOKEN);
    for (path, want) in [
        (alice_balance.as_str(), 403),
        (payee.as_str(), 403),
        ("/v1/epochs", 200),
        ("/v1/epochs/1", 200),
        (alice_proof.as_str(), 200),
        (bob_proof.as_str(), 200),
    ] {
        assert_eq!(
            status_with(&server, path, &auditor).await,
            want,
            "auditor: {path}"
        );
    }

    let now = now_ms();
    for (path, want) in [
        (alice_balance.as_str(), 200),
        (bob_balance.as_str(), 403),
        (payee.as_str(), 403),
        ("/v1/epochs", 200),
        (alice_proof.as_str(), 200),
        (bob_proof.as_str(), 403),
    ] {
        let headers = signed_by(1, &DOMAIN, now, path);
        assert_eq!(
            status_with(&server, path, &headers).await,
            want,
            "alice: {path}"
        );
    }
    // A signature proves one request: not another path, not another deployment, not long after.
    let other_deployment = Domain {
        chain_id: 1,
        ..DOMAIN
    };
    for (headers, why) in [
        (
            signed_by(1, &DOMAIN, now, &bob_balance),
            "signed for another path",
        ),
        (
            signed_by(1, &other_deployment, now, &alice_balance),
            "another deployment",
        ),
        (
            signed_by(1, &DOMAIN, now - 300_001, &alice_balance),
            "too old",
        ),
        (
            signed_by(2, &DOMAIN, now, &alice_balance)[1..].to_vec(),
            "headers missing",
        ),
    ] {
        assert_eq!(
            status_with(&server, &alice_balance, &headers).await,
            401,
            "{why}"
        );
    }
    let mut bob_claims_alice = signed_by(2, &DOMAIN, now, &alice_balance);
    bob_claims_alice[0].1 = alice.to_string();
    assert_eq!(
        status_with(&server, &alice_balance, &bob_claims_alice).await,
        401,
        "bob's signature under alice's key"
    );

    // The CLI's client signs the same way.
    let signed_client = QueryClient::new(&server.url(""))
        .expect("client")
        .with_credentials(Credentials::Payer {
            key: Box::new(key(1)),
            domain: DOMAIN,
        });
    assert_eq!(
        signed_client
            .payer(&alice)
            .await
            .expect("own balance")
            .payer,
        alice.to_string()
    );
    match signed_client.payer(&bob).await {
        Err(QueryError::Refused { status: 403, .. }) => {}
        other => panic!("bob's balance as alice: {other:?}"),
    }
    let operator_client = QueryClient::new(&server.url(""))
        .expect("client")
        .with_credentials(Credentials::Bearer(OPERATOR_TOKEN.into()));
    operator_client
        .payer(&bob)
        .await
        .expect("operator reads any payer");
}

/// What the pinned `@openzeppelin/merkle-tree` says about each dump: "ok" when
/// `StandardMerkleTree.load(dump)` (which validates every value and node) accepts it.
fn openzeppelin_loads(dumps: &[Value]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("cases.json");
    let cases: Vec<Value> = dumps
        .iter()
        .map(|dump| serde_json::json!({ "dump": dump, "proofs": null }))
        .collect();
    std::fs::write(&input, serde_json::json!({ "cases": cases }).to_string()).expect("write");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../settle/tests/openzeppelin.js"
    );
    let output = std::process::Command::new("node")
        .arg(script)
        .arg(&input)
        .output()
        .expect("node runs (scripts/bootstrap.sh installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON");
    results
        .iter()
        .map(|result| result["load"].as_str().expect("load").to_owned())
        .collect()
}

async fn get_with(server: &Server, path: &str, headers: &[(&str, String)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(server.url(path));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_get_each_sealed_epochs_tree_and_receipts_and_payers_only_their_own() {
    let server = start_with(
        Some(Arc::new(FixedChain::p1_and_epoch_1()) as Arc<dyn ChainView>),
        |state| state.with_access(closed_access()),
    )
    .await;
    server.ready.store(true, Ordering::Release);
    let auditor = bearer(AUDITOR_TOKEN);
    let alice = payer_of(&key(1));

    // The tree: what the ledger committed, in the layout the npm package validates.
    let dump: Value = get_with(&server, "/v1/epochs/1/tree", &auditor)
        .await
        .json()
        .await
        .expect("JSON");
    let tree: merkle::StandardDump = serde_json::from_value(dump.clone()).expect("a dump");
    let tree = tree.into_tree().expect("a valid tree");
    assert_eq!(
        tree.root(),
        EpochTree::from_sealed(&server.sealed[0])
            .expect("tree")
            .root()
    );
    let alices_path = "/v1/epochs/1/tree";
    let alices: Value = get_with(
        &server,
        alices_path,
        &signed_by(1, &DOMAIN, now_ms(), alices_path),
    )
    .await
    .json()
    .await
    .expect("JSON");
    assert_eq!(alices["tree"], dump["tree"], "a payer sees every node");
    let alices_values = alices["values"].as_array().expect("values");
    assert_eq!(
        alices_values.len(),
        2,
        "alice's two channels only: {alices:#}"
    );
    assert!(
        alices_values
            .iter()
            .all(|v| v["value"][1] == format!("0x{alice}"))
    );
    assert_eq!(openzeppelin_loads(&[dump, alices]), ["ok", "ok"]);

    // The receipts: exactly the signed bytes, in the order applied, in pages that resume.
    let mut raw_headers = auditor.clone();
    raw_headers.push(("accept", "application/octet-stream".into()));
    let raw = |path| get_with(&server, path, &raw_headers);
    let whole = raw("/v1/epochs/1/receipts").await;
    assert!(whole.headers().get("x-tollgate-next-after").is_none());
    let whole = whole.bytes().await.expect("body");
    assert_eq!(whole.len(), 3 * 176);
    let first = raw("/v1/epochs/1/receipts?limit=2").await;
    assert_eq!(
        first
            .headers()
            .get("x-tollgate-next-after")
            .map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let rest = raw("/v1/epochs/1/receipts?after=1&limit=2").await;
    assert!(rest.headers().get("x-tollgate-next-after").is_none());
    let paged = [
        first.bytes().await.expect("page"),
        rest.bytes().await.expect("page"),
    ]
    .concat();
    assert_eq!(paged, whole);
    for (record, paid) in whole.chunks_exact(176).zip(&epochs_paid()[0]) {
        let receipt = tollgate_engine::ReceiptView::parse(record).expect("a receipt");
        assert_eq!(
            (
                receipt.payer(),
                receipt.payee(),
                receipt.amount(),
                receipt.nonce()
            ),
            (
                payer_of(&key(paid.payer)),
                paid.payee,
                paid.amount,
                paid.nonce
            )
        );
    }
    let lines = get_with(&server, "/v1/epochs/1/receipts", &auditor)
        .await
        .text()
        .await
        .expect("JSON lines");
    assert_eq!(lines.lines().count(), 3);
    let receipts_path = "/v1/epochs/1/receipts";
    let alices_lines = get_with(
        &server,
        receipts_path,
        &signed_by(1, &DOMAIN, now_ms(), receipts_path),
    )
    .await
    .text()
    .await
    .expect("JSON lines");
    assert_eq!(alices_lines.lines().count(), 2, "{alices_lines}");
    assert!(
        alices_lines
            .lines()
            .all(|line| line.contains(&alice.to_string()))
    );

    // Epochs without data say why.
    for (path, status, code) in [
        ("/v1/epochs/3/receipts", 404, "epoch_not_sealed"),
        ("/v1/epochs/3/tree", 404, "epoch_not_sealed"),
        ("/v1/epochs/9/receipts", 404, "unknown_epoch"),
        ("/v1/epochs/9/tree", 404, "unknown_epoch"),
        ("/v1/epochs/1/receipts?limit=0", 400, "bad_query"),
    ] {
        let response = get_with(&server, path, &auditor).await;
        assert_eq!(response.status().as_u16(), status, "{path}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["error"], code, "{path}");
    }
    for path in ["/v1/epochs/1/receipts", "/v1/epochs/1/tree"] {
        assert_eq!(status_with(&server, path, &[]).await, 401, "{path}");
    }

    // And `tollgate audit` recomputes both sealed epochs from them.
    let args = audit_args(&server);
    let report = audit::audit(&args).await.expect("audit runs");
    assert!(report.agrees(), "{}", report.render());
    assert_eq!(report.epochs.len(), 2);
}

/// Submits signed `receipts` as one batch of producer 1 and waits for its ack.
async fn submit_signed(engine: &Engine, batch_seq: u64, receipts: &[Receipt]) -> BatchAck {
    engine
        .submit(SubmitRequest {
            client_id: 1,
            producer_id: 1,
            session_epoch: 1,
            batch_seq,
            receipts: ReceiptBatch::from_receipts(receipts),
            prejudged: Vec::new(),
        })
        .expect("queued")
        .await
        .expect("engine answered")
        .expect("batch applied")
}

fn session_receipt(session: u8, payee: Address, amount: u64, nonce: u64) -> Receipt {
    UnsignedReceipt {
        payer: payer_of(&key(session)),
        payee,
        amount,
        nonce,
        timestamp_ms: now_ms(),
        request_hash: [5; 32],
        session: true,
    }
    .sign(&key(session), &DOMAIN)
}

/// `POST path` with `body` as `content_type` and no credentials: the status and JSON body.
async fn post(server: &Server, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url(path))
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_posted_by_their_signature_alone_read_back_and_refused_by_stable_reason() {
    let server = start_with(None, |state| state.with_access(closed_access())).await;
    server.ready.store(true, Ordering::Release);
    let (_, doc) = get(&server, "/openapi.json").await;
    let grant_schema = &doc["components"]["schemas"]["Grant"];
    let error_schema = &doc["components"]["schemas"]["Error"];
    let bob = payer_of(&key(2));
    let session = payer_of(&key(8));
    // Bob grants session key 8 up to 100, to P1 only.
    let grant = Grant {
        payees: PayeeScope::Only(vec![P1]),
        ..standing_grant(2, 8, 100).grant
    }
    .sign(&key(2));
    let raw = grant.to_bytes().to_vec();

    // No credentials: the payer's signature authorizes it. Answered once durable.
    let (status, held) = post(
        &server,
        "/v1/grants",
        "application/octet-stream",
        raw.clone(),
    )
    .await;
    assert_eq!(status, 200, "{held}");
    check(&doc, grant_schema, &held, "grant").unwrap_or_else(|p| panic!("{p}\n{held:#}"));
    assert_eq!(held["payer"], bob.to_string());
    assert_eq!(held["session_key"], session.to_string());
    assert_eq!(held["grant"], hex::encode(&raw));
    assert_eq!(held["cap"], "100");
    assert_eq!(held["payees"], serde_json::json!([P1.to_string()]));
    assert_eq!(
        held["granted_at"],
        serde_json::json!({"epoch": 3, "index": 1})
    );
    assert_eq!(held["spent"]["total"], "0");
    assert!(held["revocation"].is_null());
    // The same grant again, as `tollgate grant` prints it: the same answer, nothing changed.
    let line = serde_json::to_vec(&tollgate_query::grants::GrantTerms::of(&grant)).expect("line");
    let (status, again) = post(&server, "/v1/grants", "application/json", line).await;
    assert_eq!((status, &again), (200, &held));

    // Each bad one gets its own stable reason and status, and changes nothing.
    let mut tampered = raw.clone();
    tampered[100] ^= 1;
    let foreign = Grant {
        domain: Domain {
            chain_id: 1,
            ..DOMAIN
        },
        ..grant.grant.clone()
    }
    .sign(&key(2));
    let cases = [
        (
            "/v1/grants",
            "application/octet-stream",
            tampered,
            422,
            "bad_signature",
            3,
        ),
        (
            "/v1/grants",
            "application/octet-stream",
            foreign.to_bytes().to_vec(),
            422,
            "wrong_deployment",
            2,
        ),
        (
            "/v1/grants",
            "application/octet-stream",
            raw[..200].to_vec(),
            400,
            "malformed",
            1,
        ),
        (
            "/v1/grants",
            "application/json",
            br#"{"cap":"1"}"#.to_vec(),
            400,
            "malformed",
            1,
        ),
        // Alice grants bob's session key: another payer's session.
        (
            "/v1/grants",
            "application/octet-stream",
            standing_grant(1, 8, 5).to_bytes().to_vec(),
            409,
            "granted_by_another_payer",
            10,
        ),
        // A revocation of a session key nobody granted.
        (
            "/v1/revocations",
            "application/octet-stream",
            Revocation {
                domain: DOMAIN,
                payer: bob,
                session: payer_of(&key(9)),
                revoked_at_ms: 1,
            }
            .sign(&key(2))
            .to_bytes()
            .to_vec(),
            404,
            "no_grant",
            13,
        ),
    ];
    for (path, content_type, body, status, reason, code) in cases {
        let (got, error) = post(&server, path, content_type, body).await;
        assert_eq!(got, status, "{reason}: {error}");
        assert_eq!(error["error"], "grant_refused", "{error}");
        assert_eq!(
            (error["reason"].as_str(), error["code"].as_u64()),
            (Some(reason), Some(code))
        );
        check(&doc, error_schema, &error, reason).unwrap_or_else(|p| panic!("{p}"));
    }
    let path = format!("/v1/grants/{session}");
    let (status, unchanged) = get_json_with(&server, &path, &bearer(AUDITOR_TOKEN)).await;
    assert_eq!((status, &unchanged), (200, &held));

    // Readers: auditors, the granting payer and the session itself; not another payer.
    assert_eq!(status_with(&server, &path, &[]).await, 401);
    assert_eq!(
        status_with(&server, &path, &signed_by(2, &DOMAIN, now_ms(), &path)).await,
        200
    );
    assert_eq!(
        status_with(&server, &path, &signed_by(8, &DOMAIN, now_ms(), &path)).await,
        200
    );
    assert_eq!(
        status_with(&server, &path, &signed_by(1, &DOMAIN, now_ms(), &path)).await,
        403
    );
    let unknown = format!("/v1/grants/{}", payer_of(&key(9)));
    let (status, error) = get_json_with(&server, &unknown, &bearer(AUDITOR_TOKEN)).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (404, Some("unknown_grant"))
    );

    // The session spends: charged to bob, counted against its grant.
    let ack = submit_signed(&server.engine, 10, &[session_receipt(8, P1, 30, 1)]).await;
    assert_eq!((ack.accepted, ack.rejections.len()), (1, 0), "{ack:?}");
    let (_, spent) = get_json_with(&server, &path, &bearer(AUDITOR_TOKEN)).await;
    assert_eq!(spent["spent"]["total"], "30");

    // Revoked (as JSON, then again): from then on its receipts are refused.
    let revocation = Revocation {
        domain: DOMAIN,
        payer: bob,
        session,
        revoked_at_ms: now_ms(),
    }
    .sign(&key(2));
    let body = serde_json::to_vec(&tollgate_query::grants::RevocationTerms::of(&revocation))
        .expect("line");
    let (status, revoked) =
        post(&server, "/v1/revocations", "application/json", body.clone()).await;
    assert_eq!(status, 200, "{revoked}");
    check(&doc, grant_schema, &revoked, "revoked").unwrap_or_else(|p| panic!("{p}\n{revoked:#}"));
    assert_eq!(
        revoked["revocation"]["effective_at"],
        serde_json::json!({"epoch": 3, "index": 2})
    );
    assert_eq!(
        revoked["revocation"]["revocation"],
        hex::encode(revocation.to_bytes())
    );
    let (status, twice) = post(&server, "/v1/revocations", "application/json", body).await;
    assert_eq!((status, &twice), (200, &revoked));
    let ack = submit_signed(&server.engine, 11, &[session_receipt(8, P1, 1, 2)]).await;
    assert_eq!(ack.rejections, [(0, tollgate_engine::Reason::GrantRevoked)]);

    // The list, page by page, for an auditor; a payer sees only its own.
    let mut sessions = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(after) => format!("/v1/grants?limit=1&after={after}"),
            None => "/v1/grants?limit=1".to_owned(),
        };
        let response = get_with(&server, &path, &bearer(AUDITOR_TOKEN)).await;
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let next = response
            .headers()
            .get("x-tollgate-next-after")
            .map(|value| value.to_str().expect("ascii").to_owned());
        let page: Value = response.json().await.expect("JSON");
        check(
            &doc,
            &doc["components"]["schemas"]["GrantList"],
            &page,
            &path,
        )
        .unwrap_or_else(|p| panic!("{p}"));
        sessions.extend(
            page["grants"]
                .as_array()
                .expect("grants")
                .iter()
                .map(|g| g["session_key"].clone()),
        );
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut expected = vec![payer_of(&key(7)).to_string(), session.to_string()];
    expected.sort();
    assert_eq!(sessions, expected);
    let (_, bobs) = get_json_with(
        &server,
        "/v1/grants",
        &signed_by(2, &DOMAIN, now_ms(), "/v1/grants"),
    )
    .await;
    assert_eq!(bobs["grants"].as_array().map(Vec::len), Some(1), "{bobs}");
    assert_eq!(bobs["grants"][0]["session_key"], session.to_string());

    // `tollgate grant submit` posts the lines `tollgate grant` prints; a refused one is named.
    let client = QueryClient::new(&server.url("")).expect("client");
    let carol_session = Grant {
        nonce: 2,
        ..standing_grant(2, 10, 50).grant
    }
    .sign(&key(2));
    let input = format!(
        "{}\n{}\n",
        serde_json::to_string(&tollgate_query::grants::GrantTerms::of(&carol_session))
            .expect("line"),
        serde_json::to_string(&tollgate_query::grants::GrantTerms::of(&standing_grant(
            1, 8, 5
        )))
        .expect("line"),
    );
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    let summary = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let summary = tollgate_tools::grant::submit_stream(
            &client,
            &runtime,
            input.as_bytes(),
            &mut out,
            &mut errors,
        )
        .expect("submitted");
        (summary, out, errors)
    })
    .await
    .expect("joined");
    let (summary, out, errors) = summary;
    assert_eq!((summary.lines, summary.failed), (2, 1));
    let posted: Value = serde_json::from_slice(&out).expect("one JSON line");
    assert_eq!(posted["session_key"], payer_of(&key(10)).to_string());
    let errors = String::from_utf8(errors).expect("utf-8");
    assert!(
        errors.starts_with("line 2: refused: granted_by_another_payer (code 10)"),
        "{errors}"
    );

    // Sealed, the epoch with the session's receipt audits clean: charged to bob.
    server
        .engine
        .seal_epoch()
        .expect("queued")
        .await
        .expect("answered")
        .expect("sealed");
    let saved = tempfile::tempdir().expect("tempdir");
    let mut args = AuditArgs {
        save: Some(saved.path().to_owned()),
        ..audit_args(&server)
    };
    let report = audit::audit(&args).await.expect("audit runs");
    assert!(report.agrees(), "{}", report.render());
    assert_eq!(report.epochs.len(), 3);

    // The faulty operator: its archive holds a session receipt accepted after the revocation.
    let receipts = saved.path().join("epoch-3.receipts");
    let mut archived = std::fs::read(&receipts).expect("saved receipts");
    let index = archived.len() / 176;
    archived.extend_from_slice(&session_receipt(8, P1, 5, 3).to_bytes());
    std::fs::write(&receipts, archived).expect("injected");
    args.save = None;
    args.archive = Some(saved.path().to_owned());
    let report = audit::audit(&args).await.expect("audit runs");
    assert!(!report.agrees());
    let named = report.findings.iter().any(|finding| {
        matches!(finding, audit::recompute::Finding::SessionReceipt { epoch: 3, index: i, reason, .. }
            if *i == index as u64 && reason == "grant_revoked")
    });
    assert!(named, "{}", report.render());
}

/// `tollgate audit` of every sealed epoch through `server`'s API, as an auditor.
fn audit_args(server: &Server) -> AuditArgs {
    AuditArgs {
        server: ServerArgs {
            server: server.url(""),
            json: false,
            caller: CallerArgs {
                token: Some(AUDITOR_TOKEN.into()),
                payer_key: None,
            },
            domain: DomainArgs {
                chain_id: DOMAIN.chain_id,
                contract: DOMAIN.contract,
            },
        },
        archive: None,
        save: None,
        epoch: None,
        rpc_url: None,
        from_block: 0,
        window_nonces: 1_024,
    }
}

async fn get_json_with(server: &Server, path: &str, headers: &[(&str, String)]) -> (u16, Value) {
    let response = get_with(server, path, headers).await;
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

/// The facilitator routes over the test ledger: a session key's payment (alice's grant to key 8)
/// verified, settled, refused as a replay when settled again, and the shapes the document gives; a
/// payment beyond the grant's cap refused by both routes with the grant's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x402_routes_settle_a_session_payment_once_in_the_documented_shapes() {
    use tollgate_tools::x402::{self, Extra, PaymentPayload, PaymentRequirements, reason};
    let server = start(None).await;
    server.ready.store(true, Ordering::Release);
    durable_grant(&server.engine, &standing_grant(1, 8, 50)).await;
    let (_, doc) = get(&server, "/openapi.json").await;
    let (status, supported) = get(&server, "/supported").await;
    assert_eq!(status, 200);
    assert_eq!(
        supported["kinds"][0]["extra"]["contract"],
        DOMAIN.contract.to_string()
    );

    let asked = PaymentRequirements {
        scheme: x402::SCHEME.into(),
        network: x402::network(DOMAIN.chain_id),
        asset: "0x5555555555555555555555555555555555555555".into(),
        amount: "30".into(),
        pay_to: P1.to_string(),
        max_timeout_seconds: 60,
        extra: Extra::of(&DOMAIN, 1024, 300_000).to_map(),
    };
    let session = key(8);
    let pay = |amount: u64, nonce: u64| {
        let receipt = UnsignedReceipt {
            payer: payer_of(&session),
            payee: P1,
            amount,
            nonce,
            timestamp_ms: now_ms(),
            request_hash: x402::request_hash(&asked).expect("hash"),
            session: true,
        }
        .sign(&session, &DOMAIN);
        let payment = PaymentPayload {
            x402_version: x402::X402_VERSION,
            resource: None,
            accepted: asked.clone(),
            payload: tollgate_tools::receipts_json::ReceiptLine::from_receipt(&receipt),
            extensions: None,
        };
        (
            receipt,
            serde_json::json!({
                "x402Version": 2, "paymentPayload": payment, "paymentRequirements": asked,
            }),
        )
    };
    let post = |route: &'static str, body: Value| {
        let url = server.url(route);
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .expect("request");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON"))
        }
    };
    let schema = |route: &str, status: u16| {
        doc["paths"][route]["post"]["responses"][status.to_string()]["content"]["application/json"]
            ["schema"]
            .clone()
    };

    let (receipt, body) = pay(30, 1);
    let (status, verified) = post("/verify", body.clone()).await;
    assert_eq!(
        (status, &verified["isValid"]),
        (200, &Value::Bool(true)),
        "{verified}"
    );
    check(&doc, &schema("/verify", 200), &verified, "/verify").expect("schema");
    let (status, settled) = post("/settle", body.clone()).await;
    assert_eq!(
        (status, &settled["success"]),
        (200, &Value::Bool(true)),
        "{settled}"
    );
    assert_eq!(settled["transaction"], x402::transaction_id(&receipt));
    check(&doc, &schema("/settle", 200), &settled, "/settle").expect("schema");
    let (status, again) = post("/settle", body.clone()).await;
    assert_eq!(
        (status, &again["success"], &again["errorReason"]),
        (200, &Value::Bool(false), &Value::from(reason::REPLAY)),
        "a payment settles once: {again}"
    );
    check(&doc, &schema("/settle", 200), &again, "/settle").expect("schema");
    let (_, replayed) = post("/verify", body).await;
    assert_eq!(replayed["invalidReason"], reason::REPLAY, "{replayed}");

    // The grant's cap is 50: the session has spent 30.
    let (_, dear) = pay(30, 2);
    let (_, verified) = post("/verify", dear.clone()).await;
    assert_eq!(
        verified["isValid"], true,
        "verify leaves the cap to settle: {verified}"
    );
    let (_, refused) = post("/settle", dear).await;
    assert_eq!(refused["errorReason"], reason::GRANT, "{refused}");
    assert!(
        refused["errorMessage"]
            .as_str()
            .is_some_and(|m| m.starts_with("over_grant_cap")),
        "{refused}"
    );
    let (status, malformed) = post("/settle", Value::from("nope")).await;
    assert_eq!(
        (status, &malformed["errorReason"]),
        (400, &Value::from(reason::INVALID_PAYLOAD))
    );
    check(&doc, &schema("/settle", 400), &malformed, "/settle").expect("schema");
    server.engine.shutdown().expect("clean shutdown");
}
