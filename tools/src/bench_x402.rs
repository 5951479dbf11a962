//! `tollgate bench x402`: the facilitator's `POST /settle` rate on its own, with the same run's
//! `POST /verify` rate and the fleet protocol's rate for the same receipts as references.
//!
//! 1. `tollgate serve` (a child process, fsync on, chainless, as `bench e2e` starts it); the
//!    deployment's kind is read from its `GET /supported`, so the payments are valid for it.
//! 2. Presigned before the clock starts: one payment per receipt (docs/X402.md's payload form),
//!    payers and payees round-robin, each payer's nonces rising, every request body serialized.
//! 3. `POST /verify` with every body (nothing is applied), then `POST /settle` with the same ones,
//!    each driven by many concurrent keep-alive HTTP/1.1 connections; every answer is checked
//!    (`isValid`, `success`), and the latency of each request is measured.
//! 4. The same receipts over the fleet protocol (binary TCP, batched) into a second fresh server,
//!    the first one stopped: what the same engine takes when HTTP and JSON are not in the way.
//!
//! The generator runs in this process on the same cores as the server: both figures are what
//! the two share, which the output says.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rayon::prelude::*;
use serde::Serialize;
use tokio::net::TcpStream;
use tollgate_engine::{Address, Domain, PayerKey, Receipt, UnsignedReceipt};
use tollgate_ingest::client::{Client, ClientConfig};
use tollgate_load::stats::LatencyMs;

use crate::bench_e2e::{chainless_server_args, metrics, print_report};
use crate::bench_verify::Backends;
use crate::grant::now_ms;
use crate::proc_stat::cpu_seconds;
use crate::receipts_json::ReceiptLine;
use crate::serve::process::{ServerProcess, WorkDir};
use crate::x402::{
    self, FacilitatorRequest, PaymentPayload, PaymentRequirements, SettleResponse,
    SupportedResponse, VerifyResponse,
};

/// Flags of `tollgate bench x402`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchX402Args {
    /// Payments settled (each also verified once, and sent once over the fleet protocol).
    #[arg(long, default_value_t = 200_000)]
    pub receipts: u64,
    /// Distinct payers.
    #[arg(long, default_value_t = 10_000)]
    pub payers: u32,
    /// Payees (resource servers).
    #[arg(long, default_value_t = 16)]
    pub payees: u32,
    /// Concurrent keep-alive HTTP/1.1 connections, one request in flight on each.
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
    /// Fleet-protocol connections of the reference run.
    #[arg(long, default_value_t = 4)]
    pub tcp_connections: u32,
    /// Receipts per batch of the reference run.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Batches in flight per connection in the reference run.
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// Verification threads of the server (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Skip the `POST /verify` reference.
    #[arg(long)]
    pub no_verify: bool,
    /// Skip the fleet-protocol reference.
    #[arg(long)]
    pub no_tcp: bool,
    /// Keep the servers' data directories and logs here instead of a temporary directory.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One route driven at full speed.
#[derive(Clone, Debug, Serialize)]
pub struct HttpRun {
    /// Requests per second, every answer the expected one.
    pub requests_per_s: f64,
    /// Latency of one request, from send to the whole answer.
    pub latency_ms: LatencyMs,
    /// The server's CPU time (every thread, user and system) per request.
    pub server_cpu_us_per_request: f64,
    /// The generator's (this process's) CPU time per request.
    pub generator_cpu_us_per_request: f64,
}

/// Everything the benchmark measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Payments per run.
    pub receipts: u64,
    /// Payers.
    pub payers: u32,
    /// Payees.
    pub payees: u32,
    /// HTTP connections.
    pub connections: u32,
    /// Cores the process may use (the generator and the server share them).
    pub cores: usize,
    /// The CPU, from /proc/cpuinfo.
    pub cpu_model: String,
    /// The curve arithmetic in use.
    pub backend: Backends,
    /// `POST /settle`: durable before each answer.
    pub settle: HttpRun,
    /// Receipts made durable per ledger write during the settle run, from the server's metrics.
    pub settle_receipts_per_fsync: f64,
    /// `POST /verify` over the same payments, nothing applied; unless skipped.
    pub verify: Option<HttpRun>,
    /// The same receipts over the fleet protocol into a fresh server, receipts per second;
    /// unless skipped.
    pub tcp_receipts_per_s: Option<f64>,
}

/// Runs the benchmark and prints the report.
pub fn run(args: &BenchX402Args) -> anyhow::Result<()> {
    print_report(&measure(args)?, args.json, print_text)
}

/// The payments of a run, signed and serialized before the clock starts.
struct Payments {
    receipts: Vec<Receipt>,
    bodies: Arc<Vec<Bytes>>,
}

/// Runs the benchmark.
pub fn measure(args: &BenchX402Args) -> anyhow::Result<Report> {
    ensure!(
        args.payers > 0 && args.payees > 0 && args.connections > 0 && args.receipts > 0,
        "--receipts, --payers, --payees and --connections must be positive"
    );
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = args.threads.unwrap_or(cores);
    let exe = std::env::current_exe().context("locating the tollgate binary")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let work_dir = WorkDir::given_or_temporary(args.work_dir.as_deref())?;
    let log = work_dir.log();
    let server = ServerProcess::start(
        &exe,
        &chainless_server_args(&work_dir.data(), threads),
        Some(&log),
        &[],
    )?;
    let supported: SupportedResponse = runtime.block_on(async {
        reqwest::get(format!("http://{}/supported", server.http))
            .await?
            .error_for_status()?
            .json()
            .await
    })?;
    let payments = presign(args, &supported)?;
    eprintln!("presigned {} payments", payments.receipts.len());

    let verify = if args.no_verify {
        None
    } else {
        let run = runtime.block_on(drive(
            &server,
            "/verify",
            &payments.bodies,
            args.connections,
            |answer| {
                serde_json::from_slice::<VerifyResponse>(answer).is_ok_and(|answer| answer.is_valid)
            },
        ))?;
        eprintln!("verify: {:.0} requests/s", run.requests_per_s);
        Some(run)
    };
    let settle = runtime.block_on(drive(
        &server,
        "/settle",
        &payments.bodies,
        args.connections,
        |answer| {
            serde_json::from_slice::<SettleResponse>(answer).is_ok_and(|answer| answer.success)
        },
    ))?;
    eprintln!("settle: {:.0} requests/s", settle.requests_per_s);
    let [accepted, writes] = metrics(
        &server,
        [
            "tollgate_ledger_receipts_accepted_total",
            "tollgate_ledger_write_seconds_count",
        ],
    )?;
    ensure!(writes > 0.0, "the server reports no ledger writes");
    let settle_receipts_per_fsync = accepted / writes;
    let status = server.terminate(Duration::from_secs(60))?;
    ensure!(status.success(), "the server exited with {status}");

    let tcp_receipts_per_s = if args.no_tcp {
        None
    } else {
        let data = work_dir.data().with_file_name("data-fleet");
        let log = log.with_file_name("server-fleet.log");
        let server = ServerProcess::start(
            &exe,
            &chainless_server_args(&data, threads),
            Some(&log),
            &[],
        )?;
        let rate = runtime.block_on(fleet(args, &server, &supported, payments.receipts))?;
        eprintln!("fleet protocol: {rate:.0} receipts/s");
        let status = server.terminate(Duration::from_secs(60))?;
        ensure!(status.success(), "the fleet server exited with {status}");
        Some(rate)
    };

    Ok(Report {
        receipts: args.receipts,
        payers: args.payers,
        payees: args.payees,
        connections: args.connections,
        cores,
        cpu_model: cpu_model(),
        backend: Backends::detect(),
        settle,
        settle_receipts_per_fsync,
        verify,
        tcp_receipts_per_s,
    })
}

/// The deployment a server runs, from its supported kind.
fn domain_of(supported: &SupportedResponse) -> anyhow::Result<Domain> {
    let kind = supported
        .kinds
        .first()
        .context("GET /supported lists no kind")?;
    Ok(Domain {
        chain_id: kind
            .extra
            .chain_id
            .parse()
            .context("extra.chainId is not a u64")?,
        contract: kind
            .extra
            .contract
            .parse()
            .context("extra.contract is not an address")?,
    })
}

/// Receipt `i` is payer `i % payers`'s to payee `i % payees`, with nonce `i / payers + 1`: every
/// payer's nonces rise through the run, so each channel's do too, and none repeats.
fn presign(args: &BenchX402Args, supported: &SupportedResponse) -> anyhow::Result<Payments> {
    let kind = supported
        .kinds
        .first()
        .context("GET /supported lists no kind")?;
    let domain = domain_of(supported)?;
    let payers: Vec<SigningKey> = (0..args.payers)
        .map(|i| {
            SigningKey::from_bytes(&blake3::derive_key(
                "tollgate bench x402 payer key",
                &i.to_le_bytes(),
            ))
        })
        .collect();
    let requirements = (0..args.payees)
        .map(|i| {
            let mut payee = [0u8; 20];
            payee[..4].copy_from_slice(&i.to_le_bytes());
            payee[19] = 0x42;
            let requirements = PaymentRequirements {
                scheme: x402::SCHEME.into(),
                network: kind.network.clone(),
                asset: Address::default().to_string(),
                amount: "1".into(),
                pay_to: Address(payee).to_string(),
                max_timeout_seconds: 60,
                extra: kind.extra.to_map(),
            };
            let hash = x402::request_hash(&requirements)?;
            Ok((Address(payee), requirements, hash))
        })
        .collect::<Result<Vec<_>, x402::Refusal>>()?;
    let now = now_ms();
    let signed: Vec<(Receipt, Bytes)> = (0..args.receipts)
        .into_par_iter()
        .map(|i| {
            let key = &payers[(i % u64::from(args.payers)) as usize];
            let (payee, requirements, request_hash) =
                &requirements[(i % u64::from(args.payees)) as usize];
            let receipt = UnsignedReceipt {
                payer: PayerKey(key.verifying_key().to_bytes()),
                payee: *payee,
                amount: 1,
                nonce: i / u64::from(args.payers) + 1,
                timestamp_ms: now,
                request_hash: *request_hash,
                session: false,
            }
            .sign(key, &domain);
            let body = serde_json::to_vec(&FacilitatorRequest {
                x402_version: x402::X402_VERSION,
                payment_payload: PaymentPayload {
                    x402_version: x402::X402_VERSION,
                    resource: None,
                    accepted: requirements.clone(),
                    payload: ReceiptLine::from_receipt(&receipt),
                    extensions: None,
                },
                payment_requirements: requirements.clone(),
            })?;
            Ok((receipt, Bytes::from(body)))
        })
        .collect::<serde_json::Result<_>>()?;
    let (receipts, bodies) = signed.into_iter().unzip();
    Ok(Payments {
        receipts,
        bodies: Arc::new(bodies),
    })
}

/// A request ready to send: the route and the body, headers made once.
fn post(http: &str, path: &str, body: &Bytes) -> anyhow::Result<Request<Full<Bytes>>> {
    Ok(Request::post(path)
        .header(hyper::header::HOST, http)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.clone()))?)
}

/// Posts every body to `path` from `connections` concurrent keep-alive HTTP/1.1 connections, one
/// request in flight on each, and checks each answer with `expected`.
async fn drive(
    server: &ServerProcess,
    path: &'static str,
    bodies: &Arc<Vec<Bytes>>,
    connections: u32,
    expected: fn(&[u8]) -> bool,
) -> anyhow::Result<HttpRun> {
    let mut senders = Vec::new();
    for _ in 0..connections {
        let stream = TcpStream::connect(server.http).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        senders.push(sender);
    }
    let host = server.http.to_string();
    let next = Arc::new(AtomicUsize::new(0));
    let cpu = Cpu::start(server)?;
    let started = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let (host, next, bodies) = (host.clone(), Arc::clone(&next), Arc::clone(bodies));
            tokio::spawn(async move {
                let mut latencies_us = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else {
                        return anyhow::Ok(latencies_us);
                    };
                    let sent = Instant::now();
                    sender.ready().await?;
                    let answer = sender.send_request(post(&host, path, body)?).await?;
                    let status = answer.status();
                    let answer = answer.into_body().collect().await?.to_bytes();
                    latencies_us.push(sent.elapsed().as_micros() as u64);
                    ensure!(
                        status.is_success() && expected(&answer),
                        "POST {path} of payment {i}: {status} {}",
                        String::from_utf8_lossy(&answer)
                    );
                }
            })
        })
        .collect();
    let mut latencies_us = Vec::with_capacity(bodies.len());
    for task in tasks {
        latencies_us.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let requests = latencies_us.len() as f64;
    let (server_cpu_s, generator_cpu_s) = cpu.stop(server)?;
    Ok(HttpRun {
        requests_per_s: requests / elapsed,
        latency_ms: latency(latencies_us),
        server_cpu_us_per_request: server_cpu_s * 1e6 / requests,
        generator_cpu_us_per_request: generator_cpu_s * 1e6 / requests,
    })
}

/// CPU time (user and system) of the server and of this process over a run.
struct Cpu {
    server: f64,
    generator: f64,
}

impl Cpu {
    fn start(server: &ServerProcess) -> anyhow::Result<Self> {
        Ok(Self {
            server: cpu_seconds(&format!("/proc/{}/stat", server.pid()))?,
            generator: cpu_seconds("/proc/self/stat")?,
        })
    }

    /// Seconds each spent since [`Cpu::start`].
    fn stop(self, server: &ServerProcess) -> anyhow::Result<(f64, f64)> {
        Ok((
            cpu_seconds(&format!("/proc/{}/stat", server.pid()))? - self.server,
            cpu_seconds("/proc/self/stat")? - self.generator,
        ))
    }
}

fn latency(mut us: Vec<u64>) -> LatencyMs {
    us.sort_unstable();
    let at = |quantile: f64| {
        let index = ((us.len() as f64 * quantile) as usize).min(us.len().saturating_sub(1));
        us.get(index).map_or(0.0, |&v| v as f64 / 1000.0)
    };
    LatencyMs {
        p50: at(0.5),
        p99: at(0.99),
        p999: at(0.999),
        max: us.last().map_or(0.0, |&v| v as f64 / 1000.0),
    }
}

/// The receipts over the fleet protocol, `--batch` per batch, spread over `--tcp-connections`
/// clients with `--in-flight` batches each; every one must be accepted.
async fn fleet(
    args: &BenchX402Args,
    server: &ServerProcess,
    supported: &SupportedResponse,
    receipts: Vec<Receipt>,
) -> anyhow::Result<f64> {
    let domain = domain_of(supported)?;
    let connections = args.tcp_connections.max(1);
    let mut clients = Vec::new();
    for producer in 0..connections {
        let mut config = ClientConfig::new(
            server.listen.to_string(),
            0,
            SigningKey::from_bytes(&[7; 32]),
            u64::from(producer),
            domain,
        );
        config.batch_receipts_max = u32::try_from(args.batch)?;
        config.batches_in_flight_max = u32::try_from(args.in_flight)?;
        clients.push(Client::connect(config).await?);
    }
    let count = receipts.len();
    let mut chunks: Vec<Vec<Vec<Receipt>>> = vec![Vec::new(); clients.len()];
    for (i, chunk) in receipts.chunks(args.batch.max(1)).enumerate() {
        chunks[i % clients.len()].push(chunk.to_vec());
    }
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .zip(chunks)
        .map(|(client, batches)| {
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for batch in batches {
                    answers.push(client.submit_batch(batch).await?);
                }
                let mut accepted = 0usize;
                for answer in answers {
                    accepted += answer.await?.iter().filter(|v| v.is_ok()).count();
                }
                client.close().await?;
                anyhow::Ok(accepted)
            })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        accepted += task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    ensure!(
        accepted == count,
        "the fleet server accepted {accepted} of {count} receipts"
    );
    Ok(count as f64 / elapsed)
}

/// The CPU's model name, as /proc/cpuinfo states it.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn print_text(report: &Report) {
    println!(
        "workload: {} payments, {} payers, {} payees, {} HTTP connections",
        report.receipts, report.payers, report.payees, report.connections
    );
    println!(
        "cpu: {} ({} cores, shared by the generator in this process and the server)",
        report.cpu_model, report.cores
    );
    println!("backend: {}", report.backend.curve25519_dalek_5);
    let line = |name: &str, run: &HttpRun| {
        println!(
            "{name:<14} {:>8.0} requests/s  p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.1} ms",
            run.requests_per_s,
            run.latency_ms.p50,
            run.latency_ms.p99,
            run.latency_ms.p999,
            run.latency_ms.max
        );
        println!(
            "               CPU per request: server {:.1} us, generator {:.1} us",
            run.server_cpu_us_per_request, run.generator_cpu_us_per_request
        );
    };
    line("POST /settle", &report.settle);
    println!(
        "               {:.0} settles per fsync",
        report.settle_receipts_per_fsync
    );
    if let Some(verify) = &report.verify {
        line("POST /verify", verify);
    }
    if let Some(rate) = report.tcp_receipts_per_s {
        println!(
            "fleet protocol {rate:>8.0} receipts/s (same receipts, batched TCP, fresh server)"
        );
    }
}
