//! Shared pieces of the benchmark tools: command-line options and an HTTP/1.1 accept loop.

use std::{collections::HashMap, convert::Infallible, future::Future, net::SocketAddr, sync::Arc};

use hyper::{
    Request, Response,
    body::{Body, Incoming},
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};

/// `--name value` options (a `--name` followed by another option or by nothing is a flag,
/// read as "true"). Unknown or missing options end the program with a message.
pub struct Options {
    program: &'static str,
    values: HashMap<String, String>,
}

impl Options {
    /// Parses the process arguments; `known` lists the accepted names (without `--`).
    pub fn parse(program: &'static str, usage: &str, known: &[&str]) -> Self {
        let mut values = HashMap::new();
        let mut args = std::env::args().skip(1).peekable();
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                println!("usage: {program} {usage}");
                std::process::exit(0);
            }
            let Some(name) = arg.strip_prefix("--").filter(|n| known.contains(n)) else {
                eprintln!("{program}: unknown argument {arg:?}\nusage: {program} {usage}");
                std::process::exit(2);
            };
            let value = match args.peek() {
                Some(next) if !next.starts_with("--") => args.next().unwrap_or_default(),
                _ => "true".to_owned(),
            };
            values.insert(name.to_owned(), value);
        }
        Self { program, values }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.get(name) == Some("true")
    }

    pub fn required(&self, name: &str) -> &str {
        self.get(name)
            .unwrap_or_else(|| fail(self.program, &format!("--{name} is required")))
    }

    /// A parsed value, or `default` when the option is absent.
    pub fn parsed<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.get(name) {
            None => default,
            Some(raw) => raw
                .parse()
                .unwrap_or_else(|_| fail(self.program, &format!("--{name}: bad value {raw:?}"))),
        }
    }
}

/// Prints `program: message` and exits 1.
pub fn fail(program: &str, message: &str) -> ! {
    eprintln!("{program}: {message}");
    std::process::exit(1)
}

/// Serves HTTP/1.1 with keep-alive on `addr` until the process is killed, one task per
/// connection, calling `handler` for every request.
pub async fn serve<H, F, B>(program: &'static str, addr: SocketAddr, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| fail(program, &format!("cannot bind {addr}: {e}")));
    eprintln!("{program}: listening on {addr}");
    let handler = Arc::new(handler);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                eprintln!("{program}: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let answer = handler(request);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            // Errors here are clients going away mid-request: nothing to report.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
