//! The x402 facilitator of a real `tollgate serve` over a real anvil with funded payers: verify
//! then settle then replay, each kind of payment the binding refuses (underpaid, wrong payee,
//! wrong network, bad signature, unfunded payer, bad body), and a concurrent burst of settles
//! whose total is exactly what the ledger charged each payer, its signatures checked in batches.

mod common;

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use serde_json::Value;
use tollgate_engine::{Address, Domain, PayerKey, UnsignedReceipt};
use tollgate_load::population::payer_keys;
use tollgate_query::model::PayerView;
use tollgate_settle::chain::DeployParams;
use tollgate_tools::receipts_json::ReceiptLine;
use tollgate_tools::x402::{
    self, FacilitatorRequest, PaymentPayload, PaymentRequirements, SettleResponse,
    SupportedResponse, VerifyResponse, reason,
};

const SEED: u64 = 402;
/// Payers of the burst; one more pays the single-payment cases.
const BURST_PAYERS: u32 = 4;
const BURST_SETTLES: u64 = 2_000;
const DEPOSIT: u128 = 10_000_000;
const PRICE: u64 = 1_000;

struct Facilitator {
    api: String,
    http: reqwest::Client,
    domain: Domain,
    requirements: PaymentRequirements,
}

impl Facilitator {
    async fn post(&self, route: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{route}", self.api))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {route}: {e}"));
        let status = response.status().as_u16();
        let json = response.json().await.expect("a JSON answer");
        (status, json)
    }

    async fn verify(
        &self,
        payment: &PaymentPayload,
        asked: &PaymentRequirements,
    ) -> VerifyResponse {
        let (status, body) = self.post("/verify", request(payment, asked)).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).expect("a VerifyResponse")
    }

    async fn settle(
        &self,
        payment: &PaymentPayload,
        asked: &PaymentRequirements,
    ) -> SettleResponse {
        let (status, body) = self.post("/settle", request(payment, asked)).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).expect("a SettleResponse")
    }

    /// Both routes refuse `payment` with x402 reason `code`.
    async fn refused(&self, payment: &PaymentPayload, asked: &PaymentRequirements, code: &str) {
        let verified = self.verify(payment, asked).await;
        assert!(!verified.is_valid, "{verified:?}");
        assert_eq!(
            verified.invalid_reason.as_deref(),
            Some(code),
            "{verified:?}"
        );
        let settled = self.settle(payment, asked).await;
        assert!(!settled.success, "{settled:?}");
        assert_eq!(settled.error_reason.as_deref(), Some(code), "{settled:?}");
        assert_eq!(settled.transaction, "");
    }

    fn pay(
        &self,
        key: &SigningKey,
        amount: u64,
        nonce: u64,
        asked: &PaymentRequirements,
    ) -> PaymentPayload {
        let receipt = UnsignedReceipt {
            payer: PayerKey(key.verifying_key().to_bytes()),
            payee: asked.pay_to.parse().expect("payTo"),
            amount,
            nonce,
            timestamp_ms: now_ms(),
            request_hash: x402::request_hash(asked).expect("request hash"),
            session: false,
        }
        .sign(key, &self.domain);
        PaymentPayload {
            x402_version: x402::X402_VERSION,
            resource: None,
            accepted: asked.clone(),
            payload: ReceiptLine::from_receipt(&receipt),
            extensions: None,
        }
    }

    async fn paid(&self, payer: &SigningKey) -> u128 {
        let key = PayerKey(payer.verifying_key().to_bytes());
        let view: PayerView = self
            .http
            .get(format!("{}/v1/payers/{key}", self.api))
            .send()
            .await
            .expect("GET payer")
            .json()
            .await
            .expect("a PayerView");
        view.pending + view.settled
    }
}

fn request(payment: &PaymentPayload, asked: &PaymentRequirements) -> String {
    serde_json::to_string(&FacilitatorRequest {
        x402_version: x402::X402_VERSION,
        payment_payload: payment.clone(),
        payment_requirements: asked.clone(),
    })
    .expect("json")
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("ms fit u64")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facilitator_verifies_settles_once_refuses_what_it_must_and_charges_a_burst_exactly() {
    let anvil = common::spawn_anvil();
    let deployed = common::deploy(&anvil, &DeployParams::dev()).await;
    let keys = payer_keys(SEED, BURST_PAYERS + 1);
    let funded: Vec<PayerKey> = keys
        .iter()
        .map(|key| PayerKey(key.verifying_key().to_bytes()))
        .collect();
    common::fund(&anvil, &deployed, &funded, DEPOSIT).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::start_dev_server(&anvil, &deployed, dir.path(), &[]);
    let api = format!("http://{}", server.http);
    let http = reqwest::Client::new();

    // What the deployment supports is what a resource server builds its requirements from.
    let supported: SupportedResponse = http
        .get(format!("{api}/supported"))
        .send()
        .await
        .expect("GET /supported")
        .json()
        .await
        .expect("a SupportedResponse");
    let kind = &supported.kinds[0];
    assert_eq!(kind.scheme, "tollgate");
    assert_eq!(kind.network, format!("eip155:{}", deployed.chain_id));
    assert_eq!(
        kind.extra.contract,
        deployed.settlement.to_string().to_lowercase()
    );
    let domain = Domain {
        chain_id: deployed.chain_id,
        contract: kind.extra.contract.parse().expect("contract"),
    };
    let payee = Address([0x77; 20]);
    let mut extra = kind.extra.to_map();
    extra.insert(
        "resource".into(),
        Value::from("http://api.test/v1/forecast"),
    );
    let requirements = PaymentRequirements {
        scheme: kind.scheme.clone(),
        network: kind.network.clone(),
        asset: deployed.token.to_string(),
        amount: PRICE.to_string(),
        pay_to: payee.to_string(),
        max_timeout_seconds: 60,
        extra,
    };
    let facilitator = Facilitator {
        api: api.clone(),
        http: http.clone(),
        domain,
        requirements: requirements.clone(),
    };
    let asked = &facilitator.requirements;
    let payer = &keys[BURST_PAYERS as usize];
    let nonces = x402::NonceClock::new();

    // Verify, settle, settle again (a payment settles once: the repeat is a replay, as a second
    // settle of an EVM authorization fails onchain), then the nonce is spent.
    let payment = facilitator.pay(payer, PRICE, nonces.next(now_ms()), asked);
    let verified = facilitator.verify(&payment, asked).await;
    assert!(verified.is_valid, "{verified:?}");
    let payer_hex = PayerKey(payer.verifying_key().to_bytes()).to_string();
    assert_eq!(verified.payer.as_deref(), Some(payer_hex.as_str()));
    let settled = facilitator.settle(&payment, asked).await;
    assert!(settled.success, "{settled:?}");
    let receipt = payment.payload.to_receipt().expect("receipt");
    assert_eq!(settled.transaction, x402::transaction_id(&receipt));
    assert_eq!(settled.network, asked.network);
    assert_eq!(settled.payer.as_deref(), Some(payer_hex.as_str()));
    let repeated = facilitator.settle(&payment, asked).await;
    assert!(
        !repeated.success,
        "a repeated settle is refused: {repeated:?}"
    );
    assert_eq!(repeated.error_reason.as_deref(), Some(reason::REPLAY));
    assert_eq!(
        facilitator.paid(payer).await,
        u128::from(PRICE),
        "and counted once"
    );
    // Copies of one payment settled at the same moment (two resource servers given the same
    // header): exactly one succeeds.
    let copied = facilitator.pay(payer, PRICE, nonces.next(now_ms()), asked);
    let answers =
        futures::future::join_all((0..8).map(|_| facilitator.settle(&copied, asked))).await;
    let successes = answers.iter().filter(|answer| answer.success).count();
    assert_eq!(successes, 1, "one copy settles: {answers:?}");
    for refused in answers.iter().filter(|answer| !answer.success) {
        assert_eq!(
            refused.error_reason.as_deref(),
            Some(reason::REPLAY),
            "{refused:?}"
        );
    }
    assert_eq!(
        facilitator.paid(payer).await,
        2 * u128::from(PRICE),
        "and counted once"
    );
    let replayed = facilitator.verify(&payment, asked).await;
    assert_eq!(replayed.invalid_reason.as_deref(), Some(reason::REPLAY));
    // Another receipt under the spent nonce is a replay, however it differs.
    let other = facilitator.pay(payer, PRICE + 1, receipt.nonce, asked);
    facilitator.refused(&other, asked, reason::REPLAY).await;

    // Requirements the receipt does not meet.
    let underpaid = facilitator.pay(payer, PRICE - 1, nonces.next(now_ms()), asked);
    facilitator.refused(&underpaid, asked, reason::AMOUNT).await;
    let mut elsewhere = asked.clone();
    elsewhere.pay_to = Address([0x78; 20]).to_string();
    let wrong_payee = facilitator.pay(payer, PRICE, nonces.next(now_ms()), &elsewhere);
    facilitator
        .refused(&wrong_payee, asked, reason::RECIPIENT_MISMATCH)
        .await;
    let mut mainnet = asked.clone();
    mainnet.network = "eip155:1".into();
    let wrong_network = facilitator.pay(payer, PRICE, nonces.next(now_ms()), &mainnet);
    facilitator
        .refused(&wrong_network, &mainnet, reason::INVALID_NETWORK)
        .await;
    let genuine = facilitator.pay(payer, PRICE, nonces.next(now_ms()), asked);
    let mut forged = genuine.clone();
    forged.payload.amount = (PRICE * 5).to_string();
    facilitator.refused(&forged, asked, reason::SIGNATURE).await;
    // A forged payment takes nothing: its payer's real one under the same nonce settles.
    let settled = facilitator.settle(&genuine, asked).await;
    assert!(settled.success, "{settled:?}");
    let unfunded = SigningKey::from_bytes(&[0x5a; 32]);
    let broke = facilitator.pay(&unfunded, PRICE, nonces.next(now_ms()), asked);
    facilitator
        .refused(&broke, asked, reason::INSUFFICIENT_FUNDS)
        .await;
    let verdict = facilitator.verify(&broke, asked).await;
    assert!(
        verdict
            .invalid_message
            .as_deref()
            .is_some_and(|m| m.starts_with("unknown_payer")),
        "{verdict:?}"
    );
    for body in ["", "not json", "{\"x402Version\":2}"] {
        for route in ["/verify", "/settle"] {
            let (status, answer) = facilitator.post(route, body).await;
            assert_eq!(status, 400, "{route} {body:?}: {answer}");
            let code = answer
                .get("invalidReason")
                .or_else(|| answer.get("errorReason"))
                .and_then(Value::as_str);
            assert_eq!(code, Some(reason::INVALID_PAYLOAD), "{answer}");
        }
    }
    // None of it cost the payer anything but the genuine payment.
    assert_eq!(facilitator.paid(payer).await, 3 * u128::from(PRICE));

    // A concurrent burst: every settle succeeds once and the payers are charged the exact total.
    let base = now_ms();
    let payments: Vec<(usize, PaymentPayload, u64)> = (0..BURST_SETTLES)
        .map(|i| {
            let who = (i % u64::from(BURST_PAYERS)) as usize;
            let amount = PRICE + i % 7;
            let nonce = base + i / u64::from(BURST_PAYERS);
            (
                who,
                facilitator.pay(&keys[who], amount, nonce, asked),
                amount,
            )
        })
        .collect();
    let mut expected = vec![0u128; BURST_PAYERS as usize];
    for (who, _, amount) in &payments {
        expected[*who] += u128::from(*amount);
    }
    let equations = || async {
        server
            .metric("tollgate_verify_equations_total")
            .await
            .expect("GET /metrics")
            .unwrap_or(0.0)
    };
    let equations_before = equations().await;
    let answers: Vec<SettleResponse> = futures::stream::iter(payments.iter())
        .map(|(_, payment, _)| facilitator.settle(payment, asked))
        .buffer_unordered(256)
        .collect()
        .await;
    assert!(
        answers.iter().all(|answer| answer.success),
        "{:?}",
        answers.iter().find(|a| !a.success)
    );
    for (who, key) in keys.iter().take(BURST_PAYERS as usize).enumerate() {
        assert_eq!(facilitator.paid(key).await, expected[who], "payer {who}");
    }
    // The settles' signatures were checked by the engine's verify stage (in batch equations;
    // how many settles share one depends on timing, which engine/src/pipeline/tests.rs pins
    // down), not by the facilitator before it.
    assert!(
        equations().await > equations_before,
        "the engine's verify stage checked none of the settles' signatures"
    );
}
