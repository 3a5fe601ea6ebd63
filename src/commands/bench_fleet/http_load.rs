//! The HTTP load of `bench fleet --http-clients N`: N keep-alive HTTP/1.1
//! connections sending `GET /v1/fine_tuning/jobs?limit=20` as the tenant
//! at `--http-rate` requests per second in all, and one more scraping
//! `/metrics` at `--scrape-rate`; each request's time from its first byte
//! sent to its last byte received.
//!
//! Not here: what is measured of the coordinator meanwhile (`bench_fleet`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// The jobs list as the console asks for it.
pub const JOBS_LIST: &str = "/v1/fine_tuning/jobs?limit=20";
pub const METRICS: &str = "/metrics";

/// What the load saw: each request's time, and the requests that failed.
#[derive(Debug, Default)]
pub struct Samples {
    pub jobs_list_ms: Vec<f64>,
    pub scrape_ms: Vec<f64>,
    pub errors: usize,
    /// The first failure, to show.
    pub first_error: Option<String>,
}

impl Samples {
    pub fn add(&mut self, other: Samples) {
        self.jobs_list_ms.extend(other.jobs_list_ms);
        self.scrape_ms.extend(other.scrape_ms);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// The load while it runs.
pub struct HttpLoad {
    tasks: Vec<JoinHandle<Samples>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl HttpLoad {
    /// Starts `clients` connections to `address` (`host:port`) sharing
    /// `rate` job lists per second, and a scraper at `scrape_rate`.
    pub fn start(
        address: &str,
        token: &str,
        clients: usize,
        rate: f64,
        scrape_rate: f64,
    ) -> HttpLoad {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let per_client = rate / clients.max(1) as f64;
        for i in 0..clients {
            // Spread the clients' ticks over one period.
            let offset = i as f64 / clients as f64;
            tasks.push(tokio::spawn(client(
                address.to_string(),
                token.to_string(),
                JOBS_LIST,
                per_client,
                offset,
                stopped.clone(),
            )));
        }
        if scrape_rate > 0.0 {
            tasks.push(tokio::spawn(client(
                address.to_string(),
                token.to_string(),
                METRICS,
                scrape_rate,
                0.5,
                stopped,
            )));
        }
        HttpLoad { tasks, stop }
    }

    /// Stops every connection and gathers what they saw.
    pub async fn stop(self) -> Samples {
        self.stop.send_replace(true);
        let mut samples = Samples::default();
        for task in self.tasks {
            match task.await {
                Ok(seen) => samples.add(seen),
                Err(e) => {
                    samples.errors += 1;
                    samples.first_error.get_or_insert(e.to_string());
                }
            }
        }
        samples
    }
}

/// One connection sending `GET path` `rate` times a second (its first
/// after `offset` of a period) until told to stop.
async fn client(
    address: String,
    token: String,
    path: &'static str,
    rate: f64,
    offset: f64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Samples {
    let mut samples = Samples::default();
    if rate <= 0.0 || !rate.is_finite() {
        return samples;
    }
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + period.mul_f64(offset), period);
    // A slow answer delays the next request rather than bunching them.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut connection: Option<Connection> = None;
    loop {
        tokio::select! {
            _ = stop.changed() => return samples,
            _ = tick.tick() => {}
        }
        let result = async {
            if connection.is_none() {
                connection = Some(Connection::open(&address).await?);
            }
            let open = connection.as_mut().expect("opened above");
            let start = Instant::now();
            let status = open.get(path, &token).await?;
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            if status != 200 {
                bail!("GET {path}: HTTP {status}");
            }
            Ok(ms)
        }
        .await;
        match result {
            Ok(ms) if path == METRICS => samples.scrape_ms.push(ms),
            Ok(ms) => samples.jobs_list_ms.push(ms),
            Err(e) => {
                // A broken connection is opened again for the next request.
                connection = None;
                samples.errors += 1;
                samples.first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
}

/// An HTTP/1.1 connection kept open between requests.
struct Connection {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Connection {
    async fn open(address: &str) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("cannot connect to {address}"))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream: BufReader::new(stream),
            host: address.to_string(),
        })
    }

    /// `GET path` with `token` as the bearer; the status, once the whole
    /// body is read.
    async fn get(&mut self, path: &str, token: &str) -> anyhow::Result<u16> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
            self.host
        );
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("not an HTTP status line: {line:?}"))?;
        let mut length = None;
        let mut chunked = false;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("the connection closed inside a response head");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.parse::<usize>()?);
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.eq_ignore_ascii_case("chunked");
                }
            }
        }
        if chunked {
            self.skip_chunks().await?;
        } else {
            let length = length.context("a response with neither a length nor chunks")?;
            let mut body = vec![0; length];
            self.stream.read_exact(&mut body).await?;
        }
        Ok(status)
    }

    async fn skip_chunks(&mut self) -> anyhow::Result<()> {
        let mut line = String::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim(), 16)
                .with_context(|| format!("not a chunk size: {line:?}"))?;
            // The chunk and its CRLF (the last chunk: only the CRLF).
            let mut chunk = vec![0; size + 2];
            self.stream.read_exact(&mut chunk).await?;
            if size == 0 {
                return Ok(());
            }
        }
    }
}

/// The `q`-quantile of `values` (nearest rank), NaN when there are none.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_ranks() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), 50.0);
        assert_eq!(quantile(&values, 0.99), 99.0);
        assert_eq!(quantile(&values, 1.0), 100.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
