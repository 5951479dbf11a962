//! A real 3-server NATS JetStream cluster on loopback for the cluster tests: free ports, a temp
//! store dir per server, routes between all three. Servers are killed when it is dropped.

use std::fmt::Display;
use std::future::IntoFuture;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

/// How long the servers get to elect a JetStream meta leader and see each other.
const READY_DEADLINE: Duration = Duration::from_secs(60);

const SERVERS: usize = 3;

/// How long one step of a test may take: a stalled await fails the test naming its step
/// instead of hanging the suite with nothing to say where.
pub const STEP_DEADLINE: Duration = Duration::from_secs(120);

/// Awaits `future`, failing the test with `step` if it takes longer than [`STEP_DEADLINE`].
pub async fn within<F: IntoFuture>(step: impl Display, future: F) -> F::Output {
    tokio::time::timeout(STEP_DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("stalled for {STEP_DEADLINE:?}: {step}"))
}

/// The nodes' logs (`RUST_LOG`, else the cluster crate's info) in the test's captured output,
/// so a failed test shows what the nodes did before it.
pub fn trace() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("tollgate_cluster=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<Option<Child>>,
    names: Vec<String>,
    urls: Vec<String>,
    /// How each server was started, to start it again on the same ports and store.
    binary: PathBuf,
    ports: Vec<(u16, u16)>,
    routes: Vec<String>,
    dir: tempfile::TempDir,
}

/// A missing server fails the test: the cluster tests never skip.
fn nats_server() -> PathBuf {
    tollgate_cluster::nats_server_binary().unwrap_or_else(|| {
        panic!(
            "nats-server not found on PATH or in /usr/sbin: run scripts/bootstrap.sh, which \
             installs Debian's nats-server package (the cluster tests need a real server)"
        )
    })
}

/// Ports the OS just handed out; all are held at once so none repeats.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound address").port())
        .collect()
}

fn spawn(
    binary: &Path,
    dir: &Path,
    (cluster_name, name): (&str, &str),
    port: u16,
    route_port: u16,
    routes: &str,
) -> Child {
    let store = dir.join(name);
    // Appended: a restarted server's log follows its first life's.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .expect("server log file");
    Command::new(binary)
        .args([
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-n",
            name,
            "-js",
            "-sd",
        ])
        .arg(&store)
        .args([
            // Unique per cluster: two tests' clusters never merge, whatever ports they get.
            "--cluster_name",
            cluster_name,
            "--cluster",
            &format!("nats://127.0.0.1:{route_port}"),
            "--routes",
            routes,
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()))
}

impl NatsCluster {
    /// Starts three servers and returns once JetStream can place an R3 stream on them.
    pub async fn start() -> NatsCluster {
        let binary = nats_server();
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(2 * SERVERS);
        let (client_ports, route_ports) = ports.split_at(SERVERS);
        let routes: Vec<String> = route_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let names: Vec<String> = (0..SERVERS).map(|i| format!("n{i}")).collect();
        let urls = client_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let mut cluster = NatsCluster {
            servers: (0..SERVERS).map(|_| None).collect(),
            names,
            urls,
            binary,
            ports: client_ports
                .iter()
                .copied()
                .zip(route_ports.iter().copied())
                .collect(),
            routes,
            dir,
        };
        for index in 0..SERVERS {
            cluster.spawn_server(index);
        }
        cluster.wait_ready().await;
        cluster
    }

    fn spawn_server(&mut self, index: usize) {
        let others: Vec<&str> = (0..SERVERS)
            .filter(|&j| j != index)
            .map(|j| self.routes[j].as_str())
            .collect();
        let (port, route_port) = self.ports[index];
        let cluster_name = format!("tollgate-test-{}", self.ports[0].1);
        self.servers[index] = Some(spawn(
            &self.binary,
            self.dir.path(),
            (&cluster_name, &self.names[index]),
            port,
            route_port,
            &others.join(","),
        ));
    }

    /// kill -9 of every server: NATS is down for its clients until [`NatsCluster::restart_all`].
    pub fn kill_all(&mut self) {
        for name in self.names.clone() {
            self.kill(&name);
        }
    }

    /// Starts every killed server again on its ports and store (the streams and buckets are
    /// kept) and returns once JetStream works again.
    pub async fn restart_all(&mut self) {
        for index in 0..SERVERS {
            if self.servers[index].is_none() {
                self.spawn_server(index);
            }
        }
        self.wait_ready().await;
    }

    /// Retries placing (and removing) a throwaway R3 stream: that needs a meta leader and all
    /// three servers known to it.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + READY_DEADLINE;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.probe().await {
                Ok(()) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "JetStream cluster not ready after {READY_DEADLINE:?}: {last} (server logs in {})",
            self.dir.path().display()
        );
    }

    async fn probe(&self) -> Result<(), String> {
        let client = async_nats::connect(self.urls.as_slice())
            .await
            .map_err(|e| e.to_string())?;
        let js = jetstream::new(client);
        js.create_stream(stream::Config {
            name: "probe".to_string(),
            subjects: vec!["probe".to_string()],
            num_replicas: SERVERS,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
        js.delete_stream("probe").await.map_err(|e| e.to_string())?;
        Ok(())
    }

    pub fn urls(&self) -> Vec<String> {
        self.urls.clone()
    }

    /// kill -9 of the server named `name` (as JetStream reports it, e.g. a stream leader).
    pub fn kill(&mut self, name: &str) {
        let index = self
            .names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no server named {name}"));
        if let Some(mut child) = self.servers[index].take() {
            child.kill().expect("SIGKILL the server");
            child.wait().expect("reap the server");
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for child in self.servers.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A failed test shows what the servers said.
        if std::thread::panicking() {
            for name in &self.names {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                    .unwrap_or_default();
                eprintln!("--- nats-server {name} ---\n{log}");
            }
        }
    }
}
