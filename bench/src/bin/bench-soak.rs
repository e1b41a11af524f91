//! A paced soak load for the gateway: mixed upload traffic at a fixed rate, well below
//! saturation, for a long time, with the gateway's resources sampled as it goes. `bench/soak.sh`
//! runs it; see README.md, "Soak".
//!
//! Open loop: a request is due every `1 / --rate` seconds whatever the answers do, and its latency
//! runs from the moment it was due (time queued behind a busy connection counts), over a fixed set
//! of `--connections` keep-alive connections. Every due slot sends, in this order of preference:
//! - every 20th slot (`--bad-every`), an injected bad request, the kinds in turn: a presign with a
//!   corrupted signature (401 `token_bad_signature`), with a malformed token (401
//!   `token_malformed`), with an unknown source (400 `invalid_input`); a confirmation without a
//!   token (401 `token_missing`), with another upload's key (403 `key_mismatch`), of an unknown
//!   upload (404 `upload_not_found`);
//! - else a follow-up that is due: a confirmation 1-3 s after its presign (200 `confirmed`), its
//!   repeat 1 s later (200 `replayed`, with `idempotent-replayed: true`), or a late confirmation
//!   `--late` seconds after the presign, past the confirmation window (410 `upload_expired`);
//! - else a new presign (200 `issued`), which decides its upload's fate by its number: 70 % are
//!   confirmed (3 in 7 of them confirmed twice), 10 % confirmed late, 20 % never confirmed (they
//!   expire open).
//!
//! Token `i` of `--tokens` is user `i % --users`'s (as `bench-tokens` mints them); requests take
//! the tokens in turn, and a confirmation uses another token of the uploader's user (a browser
//! that refreshed its token meanwhile), so the verified-token cache keeps seeing new tokens.
//!
//! Every `--interval` seconds it appends a row to `--csv`: the interval's requests, answers that
//! were not the expected one, latency percentiles of the interval, and the gateway's RSS, open
//! file descriptors and threads (from `/proc/--pid`), its `runtime_alive_tasks` and
//! `store_entries` metrics (from `--admin`), the RSS of `--redis-pid` when given, the load
//! average, the gateway's CPU time per request (`--clock-ticks`: `getconf CLK_TCK`), and how many
//! of its descriptors are connections to `--upstream-port` (its pool: they come and go with the
//! load, bounded by the requests in flight). At the end it writes `--summary`: one line per (route, status, outcome) with the
//! count it expected and the count it got, then `unexpected N`.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap},
    fmt::Write as _,
    io::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bench::{Options, fail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{
    Method, Request, Uri,
    client::conn::http1::{self, SendRequest},
    header,
};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpStream,
    sync::mpsc,
    time::{Instant, MissedTickBehavior},
};

const PROGRAM: &str = "bench-soak";
const USAGE: &str = "--url http://HOST:PORT --admin http://HOST:PORT --pid PID --tokens FILE \
                     --users N --csv FILE --summary FILE [--seconds 600] [--rate 200] \
                     [--interval 10] [--late SECONDS] [--connections 8] [--bad-every 20] \
                     [--redis-pid PID] [--clock-ticks 100] [--upstream-port PORT]";
const PRESIGN_QUERY: &str =
    "/api/s3/presigned-post?contenttype=image/png&filename=a.png&source=field_value";
/// Unexpected answers printed to stderr, at most: the summary counts them all.
const REPORTED: u64 = 20;

/// What an answer should be: route label, status and outcome word, as the gateway's
/// `kizen_gateway_requests_total` labels it.
type Expected = (&'static str, u16, &'static str);

/// An upload the gateway issued to the soak.
#[derive(Clone)]
struct Issued {
    user: usize,
    id: String,
    key: String,
}

/// What becomes of an upload after its presign.
#[derive(Clone, Copy)]
enum Fate {
    Confirm { replay: bool },
    Late,
    Never,
}

impl Fate {
    /// 70 % confirmed (3 in 7 of them twice), 10 % confirmed late, 20 % never confirmed.
    fn of(n: u64) -> Self {
        match n % 20 {
            0..=5 => Self::Confirm { replay: true },
            6..=13 => Self::Confirm { replay: false },
            14..=15 => Self::Late,
            _ => Self::Never,
        }
    }
}

/// A follow-up request, due at some instant.
enum FollowUp {
    Confirm { upload: Issued, replay: bool },
    Replay(Issued),
    Late(Issued),
}

/// One request to send: when it was due, what to send, what should come back.
struct Job {
    due: Instant,
    kind: JobKind,
}

enum JobKind {
    Presign { token: usize, fate: Fate },
    Confirm(FollowUp),
    Bad(Bad),
}

/// The injected bad requests, in turn.
#[derive(Clone, Copy)]
enum Bad {
    WrongSignature,
    MalformedToken,
    InvalidInput,
    MissingToken,
    KeyMismatch,
    UnknownUpload,
}

const BAD_KINDS: [Bad; 6] = [
    Bad::WrongSignature,
    Bad::MalformedToken,
    Bad::InvalidInput,
    Bad::MissingToken,
    Bad::KeyMismatch,
    Bad::UnknownUpload,
];

/// Everything the pacer, the connections and the sampler share.
struct Shared {
    authority: String,
    tokens: Vec<String>,
    users: usize,
    late: Duration,
    follow_ups: Mutex<BinaryHeap<Reverse<(Instant, u64, usize)>>>,
    follow_up_items: Mutex<BTreeMap<usize, FollowUp>>,
    next_item: AtomicU64,
    /// Uploads never to be confirmed, newest last: the targets of the key-mismatch requests.
    unconfirmed: Mutex<Vec<Issued>>,
    stats: Mutex<Stats>,
}

#[derive(Default)]
struct Stats {
    expected: BTreeMap<Expected, u64>,
    got: BTreeMap<(&'static str, u16, String), u64>,
    unexpected: u64,
    /// Latencies of the current interval, microseconds.
    latencies: Vec<u64>,
    interval_requests: u64,
    interval_unexpected: u64,
}

impl Shared {
    fn token_of_user(&self, user: usize, turn: usize) -> &str {
        // Tokens of one user are `user + k * users`; any of them identifies the same user.
        let per_user = self.tokens.len() / self.users;
        &self.tokens[user + (turn % per_user) * self.users]
    }

    fn schedule(&self, due: Instant, item: FollowUp) {
        let n = self.next_item.fetch_add(1, Ordering::Relaxed);
        let slot = usize::try_from(n).unwrap_or(usize::MAX);
        lock(&self.follow_up_items).insert(slot, item);
        lock(&self.follow_ups).push(Reverse((due, n, slot)));
    }

    fn take_due(&self, now: Instant) -> Option<FollowUp> {
        let mut heap = lock(&self.follow_ups);
        match heap.peek() {
            Some(Reverse((due, _, _))) if *due <= now => {
                let Reverse((_, _, slot)) = heap.pop()?;
                drop(heap);
                lock(&self.follow_up_items).remove(&slot)
            }
            _ => None,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Form-encodes a value: everything but unreserved characters and `/` as `%XX`.
fn form_value(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The token with one character of its signature changed: well formed, signed wrong.
fn corrupted(token: &str) -> String {
    let signature_at = token.rfind('.').map_or(0, |dot| dot + 1);
    let mut bytes = token.as_bytes().to_vec();
    // A character in the middle carries signature bits only (the last one may carry padding).
    if let Some(byte) = bytes.get_mut(signature_at + 5) {
        *byte = if *byte == b'A' { b'B' } else { b'A' };
    }
    String::from_utf8(bytes).unwrap_or_default()
}

fn fake_upload() -> (String, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let key = format!("uploads/{id}/a.png");
    (id, key)
}

type Body = Full<Bytes>;

fn presign_request(shared: &Shared, query: &str, token: Option<&str>) -> Request<Body> {
    let mut request = Request::get(query)
        .header(header::HOST, &shared.authority)
        .body(Full::new(Bytes::new()))
        .unwrap_or_else(|e| fail(PROGRAM, &format!("bad request: {e}")));
    if let Some(token) = token {
        authorize(&mut request, token);
    }
    request
}

fn confirm_request(shared: &Shared, id: &str, key: &str, token: Option<&str>) -> Request<Body> {
    let body = format!(
        "uuid={}&key={}&name=a.png&etag=soak-etag",
        form_value(id),
        form_value(key)
    );
    let mut request = Request::builder()
        .method(Method::POST)
        .uri("/api/s3/success")
        .header(header::HOST, &shared.authority)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|e| fail(PROGRAM, &format!("bad request: {e}")));
    if let Some(token) = token {
        authorize(&mut request, token);
    }
    request
}

fn authorize(request: &mut Request<Body>, token: &str) {
    let value = header::HeaderValue::from_str(&format!("Bearer {token}"))
        .unwrap_or_else(|_| fail(PROGRAM, "a token is not a header value"));
    request.headers_mut().insert(header::AUTHORIZATION, value);
}

/// The request for a job, what it should answer, and the upload a presign is for.
fn build(shared: &Shared, kind: &JobKind, turn: usize) -> (Request<Body>, Expected) {
    match kind {
        JobKind::Presign { token, .. } => (
            presign_request(shared, PRESIGN_QUERY, Some(&shared.tokens[*token])),
            ("presign", 200, "issued"),
        ),
        JobKind::Confirm(follow_up) => {
            let (upload, expected) = match follow_up {
                FollowUp::Confirm { upload, .. } => (upload, ("confirm", 200, "confirmed")),
                FollowUp::Replay(upload) => (upload, ("confirm", 200, "replayed")),
                FollowUp::Late(upload) => (upload, ("confirm", 410, "upload_expired")),
            };
            let token = shared.token_of_user(upload.user, turn);
            (
                confirm_request(shared, &upload.id, &upload.key, Some(token)),
                expected,
            )
        }
        JobKind::Bad(bad) => {
            let token = &shared.tokens[turn % shared.tokens.len()];
            match bad {
                Bad::WrongSignature => (
                    presign_request(shared, PRESIGN_QUERY, Some(&corrupted(token))),
                    ("presign", 401, "token_bad_signature"),
                ),
                Bad::MalformedToken => (
                    presign_request(shared, PRESIGN_QUERY, Some("not-a-jwt")),
                    ("presign", 401, "token_malformed"),
                ),
                Bad::InvalidInput => (
                    presign_request(
                        shared,
                        "/api/s3/presigned-post?contenttype=image/png&filename=a.png&source=nope",
                        Some(token),
                    ),
                    ("presign", 400, "invalid_input"),
                ),
                Bad::MissingToken => {
                    let (id, key) = fake_upload();
                    (
                        confirm_request(shared, &id, &key, None),
                        ("confirm", 401, "token_missing"),
                    )
                }
                Bad::KeyMismatch => {
                    let target = lock(&shared.unconfirmed).last().cloned();
                    match target {
                        Some(upload) => {
                            let (_, other_key) = fake_upload();
                            let token = shared.token_of_user(upload.user, turn);
                            (
                                confirm_request(shared, &upload.id, &other_key, Some(token)),
                                ("confirm", 403, "key_mismatch"),
                            )
                        }
                        // None issued yet (the first seconds): an unknown upload instead.
                        None => unknown_upload(shared, token),
                    }
                }
                Bad::UnknownUpload => unknown_upload(shared, token),
            }
        }
    }
}

fn unknown_upload(shared: &Shared, token: &str) -> (Request<Body>, Expected) {
    let (id, key) = fake_upload();
    (
        confirm_request(shared, &id, &key, Some(token)),
        ("confirm", 404, "upload_not_found"),
    )
}

/// The outcome word of an answer: the problem `code`, or the success word the gateway counts.
fn outcome_of(status: u16, replayed: bool, route: &str, body: &[u8]) -> String {
    if status == 200 {
        return match (route, replayed) {
            ("presign", _) => "issued",
            (_, true) => "replayed",
            _ => "confirmed",
        }
        .to_owned();
    }
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "no_problem_code".to_owned())
}

async fn connect(authority: &str) -> Option<SendRequest<Body>> {
    let stream = TcpStream::connect(authority).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(connection);
    Some(sender)
}

/// One keep-alive connection: takes jobs in turn with the others, sends each, records its answer.
async fn connection(
    shared: Arc<Shared>,
    jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    turn: Arc<AtomicU64>,
) {
    let mut sender = None;
    loop {
        let Some(job) = jobs.lock().await.recv().await else {
            return;
        };
        let turn = usize::try_from(turn.fetch_add(1, Ordering::Relaxed)).unwrap_or(0);
        let (request, expected) = build(&shared, &job.kind, turn);
        // The gateway closes idle keep-alive connections: a closed one is replaced before use.
        if sender.as_ref().is_none_or(SendRequest::is_closed) {
            sender = connect(&shared.authority).await;
        }
        let answer = match sender.as_mut() {
            Some(s) => match s.ready().await {
                Ok(()) => s.send_request(request).await.ok(),
                Err(_) => None,
            },
            None => None,
        };
        let (status, outcome, body) = match answer {
            Some(response) => {
                let status = response.status().as_u16();
                let replayed = response
                    .headers()
                    .get("idempotent-replayed")
                    .is_some_and(|v| v.as_bytes() == b"true");
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let outcome = outcome_of(status, replayed, expected.0, &body);
                (status, outcome, body)
            }
            None => {
                sender = None; // reconnect for the next job
                (0, "no_answer".to_owned(), Bytes::new())
            }
        };
        let micros = u64::try_from(job.due.elapsed().as_micros()).unwrap_or(u64::MAX);
        let matched = status == expected.1 && outcome == expected.2;
        if matched {
            follow_up(&shared, &job, &body);
        }
        let mut stats = lock(&shared.stats);
        *stats.expected.entry(expected).or_default() += 1;
        *stats
            .got
            .entry((expected.0, status, outcome.clone()))
            .or_default() += 1;
        stats.latencies.push(micros);
        stats.interval_requests += 1;
        if !matched {
            stats.unexpected += 1;
            stats.interval_unexpected += 1;
            if stats.unexpected <= REPORTED {
                eprintln!(
                    "{PROGRAM}: unexpected answer: wanted {} {} {}, got {status} {outcome}: {}",
                    expected.0,
                    expected.1,
                    expected.2,
                    String::from_utf8_lossy(&body)
                );
            }
        }
    }
}

/// After an answer as expected: what its upload does next.
fn follow_up(shared: &Shared, job: &Job, body: &[u8]) {
    let now = Instant::now();
    match &job.kind {
        JobKind::Presign { token, fate } => {
            let Some(upload) = issued_from(shared, *token, body) else {
                return;
            };
            match *fate {
                Fate::Confirm { replay } => {
                    // The browser's upload to S3 takes 1 to 3 s.
                    let delay = Duration::from_millis(1000 + (*token as u64 % 5) * 500);
                    shared.schedule(now + delay, FollowUp::Confirm { upload, replay });
                }
                Fate::Late => shared.schedule(now + shared.late, FollowUp::Late(upload)),
                Fate::Never => {
                    let mut unconfirmed = lock(&shared.unconfirmed);
                    unconfirmed.push(upload);
                    // Only the newest is ever used: keep a few, not all.
                    if unconfirmed.len() > 64 {
                        unconfirmed.drain(..32);
                    }
                }
            }
        }
        JobKind::Confirm(FollowUp::Confirm {
            upload,
            replay: true,
        }) => shared.schedule(
            now + Duration::from_secs(1),
            FollowUp::Replay(upload.clone()),
        ),
        _ => {}
    }
}

fn issued_from(shared: &Shared, token: usize, body: &[u8]) -> Option<Issued> {
    let answer: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(Issued {
        user: token % shared.users,
        id: answer["s3object_id"].as_str()?.to_owned(),
        key: answer["fields"]["key"].as_str()?.to_owned(),
    })
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

fn proc_status(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The process's open descriptors, and how many of them are TCP connections to `upstream_port`.
fn open_fds(pid: &str, upstream_port: Option<u16>) -> Option<(usize, Option<usize>)> {
    let mut sockets = std::collections::HashSet::new();
    let mut count = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        count += 1;
        if let Ok(target) = std::fs::read_link(entry.path())
            && let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
        {
            sockets.insert(inode.to_owned());
        }
    }
    let upstream = upstream_port.map(|port| {
        ["tcp", "tcp6"]
            .iter()
            .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
            .map(|text| {
                text.lines()
                    .skip(1)
                    .filter(|line| {
                        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
                        let fields: Vec<&str> = line.split_whitespace().collect();
                        let remote_port = fields
                            .get(2)
                            .and_then(|rem| rem.rsplit(':').next())
                            .and_then(|hex| u16::from_str_radix(hex, 16).ok());
                        remote_port == Some(port)
                            && fields.get(9).is_some_and(|inode| sockets.contains(*inode))
                    })
                    .count()
            })
            .sum::<usize>()
    });
    Some((count, upstream))
}

/// Metrics' values from the admin listener's `/metrics`.
async fn scrape(admin: &str, names: &[&str]) -> Vec<Option<f64>> {
    let text = async {
        let uri: Uri = format!("{admin}/metrics").parse().ok()?;
        let authority = uri.authority()?.to_string();
        let mut sender: SendRequest<Empty<Bytes>> = {
            let stream = TcpStream::connect(&authority).await.ok()?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.ok()?;
            tokio::spawn(connection);
            sender
        };
        let request = Request::get("/metrics")
            .header(header::HOST, authority)
            .body(Empty::new())
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        let body = response.into_body().collect().await.ok()?.to_bytes();
        String::from_utf8(body.to_vec()).ok()
    }
    .await
    .unwrap_or_default();
    names
        .iter()
        .map(|name| {
            text.lines().find_map(|line| {
                let value = line.strip_prefix(name)?.strip_prefix(' ')?;
                value.parse().ok()
            })
        })
        .collect()
}

fn cell<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(String::new, |v| v.to_string())
}

const CSV_HEADER: &str = "elapsed_s,requests,unexpected,p50_ms,p99_ms,max_ms,rss_kib,fds,threads,\
                          tasks,store_entries,redis_rss_kib,load1,cpu_us_per_request,upstream_fds";

/// A process's CPU time so far, user and system, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces, so from the last ')'): state is field 3,
    // utime and stime are fields 14 and 15.
    let mut fields = stat
        .get(stat.rfind(')')? + 2..)?
        .split_whitespace()
        .skip(11);
    Some(fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?)
}

/// Every `interval`, one CSV row: the interval's answers and latencies, the gateway's resources.
/// `ticks` holds the gateway's CPU ticks at the previous sample.
async fn sample(
    shared: &Shared,
    options: &Options,
    csv: &mut std::fs::File,
    started: Instant,
    ticks: &mut Option<u64>,
) {
    let pid = options.required("pid");
    let admin = options.required("admin").trim_end_matches('/');
    let (requests, unexpected, mut latencies) = {
        let mut stats = lock(&shared.stats);
        (
            std::mem::take(&mut stats.interval_requests),
            std::mem::take(&mut stats.interval_unexpected),
            std::mem::take(&mut stats.latencies),
        )
    };
    latencies.sort_unstable();
    let metrics = scrape(
        admin,
        &[
            "kizen_gateway_runtime_alive_tasks",
            "kizen_gateway_store_entries",
        ],
    )
    .await;
    let load1 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned));
    // CPU per request: unlike latency on a shared machine, it hardly depends on what else runs.
    let now_ticks = cpu_ticks(pid);
    let hz: f64 = options.parsed("clock-ticks", 100.0);
    let cpu_per_request = match (*ticks, now_ticks) {
        (Some(before), Some(after)) if requests > 0 => Some(format!(
            "{:.1}",
            after.saturating_sub(before) as f64 * 1e6 / hz / requests as f64
        )),
        _ => None,
    };
    *ticks = now_ticks;
    let fds = open_fds(
        pid,
        options
            .get("upstream-port")
            .map(|_| options.parsed("upstream-port", 0)),
    );
    let row = [
        format!("{:.1}", started.elapsed().as_secs_f64()),
        requests.to_string(),
        unexpected.to_string(),
        format!("{:.3}", percentile(&latencies, 0.50)),
        format!("{:.3}", percentile(&latencies, 0.99)),
        format!("{:.3}", percentile(&latencies, 1.0)),
        cell(proc_status(pid, "VmRSS:")),
        cell(fds.map(|(all, _)| all)),
        cell(proc_status(pid, "Threads:")),
        cell(metrics[0]),
        cell(metrics[1]),
        cell(
            options
                .get("redis-pid")
                .and_then(|p| proc_status(p, "VmRSS:")),
        ),
        load1.unwrap_or_default(),
        cell(cpu_per_request),
        cell(fds.and_then(|(_, upstream)| upstream)),
    ];
    writeln!(csv, "{}", row.join(","))
        .unwrap_or_else(|e| fail(PROGRAM, &format!("cannot write the CSV: {e}")));
}

fn read_tokens(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| fail(PROGRAM, &format!("cannot read {path}: {e}")))
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::main]
async fn main() {
    let options = Options::parse(
        PROGRAM,
        USAGE,
        &[
            "url",
            "admin",
            "pid",
            "tokens",
            "users",
            "csv",
            "summary",
            "seconds",
            "rate",
            "interval",
            "late",
            "connections",
            "bad-every",
            "redis-pid",
            "clock-ticks",
            "upstream-port",
        ],
    );
    let authority = options
        .required("url")
        .parse::<Uri>()
        .ok()
        .and_then(|u| u.authority().map(ToString::to_string))
        .unwrap_or_else(|| fail(PROGRAM, "--url: not http://HOST:PORT"));
    let tokens = read_tokens(options.required("tokens"));
    let users: usize = options.parsed("users", 0);
    if users == 0 || tokens.len() < users || !tokens.len().is_multiple_of(users) {
        fail(
            PROGRAM,
            "--tokens must hold a whole number of tokens per --users user",
        );
    }
    let seconds: f64 = options.parsed("seconds", 600.0);
    let rate: f64 = options.parsed("rate", 200.0);
    let interval = Duration::from_secs_f64(options.parsed("interval", 10.0));
    let bad_every: u64 = options.parsed::<u64>("bad-every", 20).max(1);
    let connections: usize = options.parsed::<usize>("connections", 8).max(1);
    let shared = Arc::new(Shared {
        authority,
        tokens,
        users,
        late: Duration::from_secs_f64(options.parsed("late", 25.0)),
        follow_ups: Mutex::new(BinaryHeap::new()),
        follow_up_items: Mutex::new(BTreeMap::new()),
        next_item: AtomicU64::new(0),
        unconfirmed: Mutex::new(Vec::new()),
        stats: Mutex::new(Stats::default()),
    });
    let csv_path = options.required("csv").to_owned();
    let mut csv = std::fs::File::create(&csv_path)
        .unwrap_or_else(|e| fail(PROGRAM, &format!("cannot create {csv_path}: {e}")));
    writeln!(csv, "{CSV_HEADER}")
        .unwrap_or_else(|e| fail(PROGRAM, &format!("cannot write {csv_path}: {e}")));

    // Room for a few seconds of slots: a stalled gateway shows as latency, not as lost requests.
    let (queue, jobs) = mpsc::channel::<Job>(((rate * 5.0) as usize).max(16));
    let jobs = Arc::new(tokio::sync::Mutex::new(jobs));
    let turn = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            tokio::spawn(connection(
                Arc::clone(&shared),
                Arc::clone(&jobs),
                Arc::clone(&turn),
            ))
        })
        .collect();

    let started = Instant::now();
    let end = started + Duration::from_secs_f64(seconds);
    let mut slots = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    // A late tick is sent at once and keeps its due time: the delay counts as latency.
    slots.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut samples = tokio::time::interval_at(started + interval, interval);
    let mut ticks = cpu_ticks(options.required("pid"));
    let (mut slot, mut presigns, mut bad) = (0u64, 0u64, 0usize);
    loop {
        tokio::select! {
            due = slots.tick() => {
                if due >= end {
                    break;
                }
                slot += 1;
                let kind = if slot % bad_every == 0 {
                    bad += 1;
                    JobKind::Bad(BAD_KINDS[bad % BAD_KINDS.len()])
                } else if let Some(item) = shared.take_due(due) {
                    JobKind::Confirm(item)
                } else {
                    presigns += 1;
                    let token = usize::try_from(presigns).unwrap_or(0) % shared.tokens.len();
                    JobKind::Presign { token, fate: Fate::of(presigns) }
                };
                if queue.send(Job { due, kind }).await.is_err() {
                    fail(PROGRAM, "every connection task ended");
                }
            }
            _ = samples.tick() => sample(&shared, &options, &mut csv, started, &mut ticks).await,
        }
    }
    drop(queue);
    for worker in workers {
        worker
            .await
            .unwrap_or_else(|_| fail(PROGRAM, "a connection task panicked"));
    }
    // The last, partial interval is not sampled: its p99 would rest on few requests.

    let stats = lock(&shared.stats);
    let mut summary = String::new();
    let mut lines = BTreeMap::<(&str, u16, String), (u64, u64)>::new();
    for (&(route, status, outcome), &n) in &stats.expected {
        lines
            .entry((route, status, outcome.to_owned()))
            .or_default()
            .0 += n;
    }
    for ((route, status, outcome), &n) in &stats.got {
        lines
            .entry((route, *status, outcome.clone()))
            .or_default()
            .1 += n;
    }
    for ((route, status, outcome), (expected, got)) in &lines {
        let _ = writeln!(summary, "{route} {status} {outcome} {expected} {got}");
    }
    let _ = writeln!(summary, "unexpected {}", stats.unexpected);
    let path = options.required("summary");
    std::fs::write(path, &summary)
        .unwrap_or_else(|e| fail(PROGRAM, &format!("cannot write {path}: {e}")));
    let total: u64 = stats.expected.values().sum();
    println!(
        "SOAK requests={total} unexpected={} seconds={:.1}",
        stats.unexpected,
        started.elapsed().as_secs_f64()
    );
}
