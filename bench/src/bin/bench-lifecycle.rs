//! Drives whole uploads through the gateway, an exact number of them, for the measurements that
//! count per upload (store memory, Redis commands, Redis CPU).
//!
//! `--count N` presigns, request `i` with the token on line `i % lines` of `--tokens`;
//! `--save FILE` writes each issued upload (token line, s3object_id, key) to FILE. Then
//! `--confirm-from FILE` confirms each upload of such a file with the token that presigned it.
//! Prints one line: `LIFECYCLE phase=... requests=... ok=... statuses=200:...,... seconds=...`.

use std::{
    collections::BTreeMap,
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use bench::{Options, fail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, header};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

const PROGRAM: &str = "bench-lifecycle";
const USAGE: &str = "--url http://HOST:PORT --tokens FILE (--count N [--save FILE] | --confirm-from FILE) \
                     [--concurrency C]";
const PRESIGN_QUERY: &str =
    "/api/s3/presigned-post?contenttype=image/png&filename=a.png&source=field_value";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One upload the gateway issued: the token line that asked for it, its id and S3 key.
struct Issued {
    token: usize,
    id: String,
    key: String,
}

enum Job {
    Presign { count: usize },
    Confirm { uploads: Vec<Issued> },
}

impl Job {
    fn len(&self) -> usize {
        match self {
            Self::Presign { count } => *count,
            Self::Confirm { uploads } => uploads.len(),
        }
    }
}

struct Outcome {
    statuses: BTreeMap<u16, usize>,
    issued: Vec<Issued>,
}

/// Form-encodes a value: everything but unreserved characters and `/` as `%XX`.
fn form_value(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn issued_from(token: usize, body: &[u8]) -> Option<Issued> {
    let answer: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(Issued {
        token,
        id: answer["s3object_id"].as_str()?.to_owned(),
        key: answer["fields"]["key"].as_str()?.to_owned(),
    })
}

async fn worker(
    client: HttpClient,
    base: Arc<str>,
    tokens: Arc<Vec<String>>,
    job: Arc<Job>,
    next: Arc<AtomicUsize>,
) -> Outcome {
    let mut outcome = Outcome {
        statuses: BTreeMap::new(),
        issued: Vec::new(),
    };
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= job.len() {
            return outcome;
        }
        let (request, token) = match &*job {
            Job::Presign { .. } => {
                let token = i % tokens.len();
                let request = Request::get(format!("{base}{PRESIGN_QUERY}"))
                    .header(header::AUTHORIZATION, format!("Bearer {}", tokens[token]))
                    .body(Full::new(Bytes::new()));
                (request, token)
            }
            Job::Confirm { uploads } => {
                let upload = &uploads[i];
                let body = format!(
                    "uuid={}&key={}&name=a.png&etag=bench-etag",
                    form_value(&upload.id),
                    form_value(&upload.key)
                );
                let request = Request::builder()
                    .method(Method::POST)
                    .uri(format!("{base}/api/s3/success"))
                    .header(
                        header::AUTHORIZATION,
                        format!("Bearer {}", tokens[upload.token]),
                    )
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Full::new(Bytes::from(body)));
                (request, upload.token)
            }
        };
        let request = request.unwrap_or_else(|e| fail(PROGRAM, &format!("bad request: {e}")));
        let status = match client.request(request).await {
            Ok(response) => {
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                if status.is_success()
                    && matches!(*job, Job::Presign { .. })
                    && let Some(issued) = issued_from(token, &body)
                {
                    outcome.issued.push(issued);
                }
                status.as_u16()
            }
            Err(_) => 0, // no answer: connection refused or reset
        };
        *outcome.statuses.entry(status).or_default() += 1;
    }
}

fn read_lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| fail(PROGRAM, &format!("cannot read {path}: {e}")))
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn load_issued(path: &str) -> Vec<Issued> {
    read_lines(path)
        .iter()
        .map(|line| {
            let mut parts = line.split(' ');
            let parsed = (|| {
                Some(Issued {
                    token: parts.next()?.parse().ok()?,
                    id: parts.next()?.to_owned(),
                    key: parts.next()?.to_owned(),
                })
            })();
            parsed.unwrap_or_else(|| fail(PROGRAM, &format!("{path}: bad line {line:?}")))
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let options = Options::parse(
        PROGRAM,
        USAGE,
        &[
            "url",
            "tokens",
            "count",
            "save",
            "confirm-from",
            "concurrency",
        ],
    );
    let base: Arc<str> = options.required("url").trim_end_matches('/').into();
    let tokens = Arc::new(read_lines(options.required("tokens")));
    if tokens.is_empty() {
        fail(PROGRAM, "--tokens: the file has no token");
    }
    let (phase, job) = match options.get("confirm-from") {
        Some(path) => (
            "confirm",
            Job::Confirm {
                uploads: load_issued(path),
            },
        ),
        None => (
            "presign",
            Job::Presign {
                count: options.parsed("count", 1000),
            },
        ),
    };
    let job = Arc::new(job);
    let concurrency: usize = options.parsed::<usize>("concurrency", 32).max(1);

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build(connector);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            tokio::spawn(worker(
                client.clone(),
                Arc::clone(&base),
                Arc::clone(&tokens),
                Arc::clone(&job),
                Arc::clone(&next),
            ))
        })
        .collect();
    let mut statuses = BTreeMap::<u16, usize>::new();
    let mut issued = Vec::new();
    for w in workers {
        let outcome = w
            .await
            .unwrap_or_else(|_| fail(PROGRAM, "a worker panicked"));
        for (status, n) in outcome.statuses {
            *statuses.entry(status).or_default() += n;
        }
        issued.extend(outcome.issued);
    }
    let seconds = started.elapsed().as_secs_f64();

    if let Some(path) = options.get("save") {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(path)
                .unwrap_or_else(|e| fail(PROGRAM, &format!("cannot create {path}: {e}"))),
        );
        for upload in &issued {
            writeln!(file, "{} {} {}", upload.token, upload.id, upload.key)
                .unwrap_or_else(|e| fail(PROGRAM, &format!("cannot write {path}: {e}")));
        }
        file.flush()
            .unwrap_or_else(|e| fail(PROGRAM, &format!("cannot write {path}: {e}")));
    }
    let ok: usize = statuses
        .iter()
        .filter(|(s, _)| (200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();
    let statuses: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}:{n}")).collect();
    println!(
        "LIFECYCLE phase={phase} requests={} ok={ok} statuses={} seconds={seconds:.3}",
        job.len(),
        statuses.join(","),
    );
}
