//! The floor of the benchmark: a bare HTTP/1.1 forwarding proxy, no authentication.
//!
//! Every request goes to the upstream as it came (same method, path, query, headers and streamed
//! body) over a pooled keep-alive client, with hop-by-hop headers dropped and the same constant
//! `X-API-KEY`, `X-BUSINESS-ID` and `X-USER-ID` set that the gateway would inject; the answer
//! streams back. What this costs per request is the least any proxy in Rust on hyper can cost.

use std::{net::SocketAddr, sync::Arc};

use bench::{Options, serve};
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::{
    HeaderMap, Request, Response, StatusCode, Uri,
    body::Incoming,
    header::{self, HeaderName, HeaderValue},
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

const PROGRAM: &str = "floor-proxy";
const USAGE: &str =
    "--listen ADDR --upstream http://HOST:PORT --api-key KEY [--business-id ID] [--user-id ID]";

const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

type Body = Either<Incoming, Full<Bytes>>;

struct Proxy {
    client: Client<HttpConnector, Incoming>,
    upstream: hyper::http::uri::Authority,
    inject: Vec<(HeaderName, HeaderValue)>,
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

impl Proxy {
    async fn forward(&self, request: Request<Incoming>) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let uri = Uri::builder()
            .scheme("http")
            .authority(self.upstream.clone())
            .path_and_query(path)
            .build();
        let Ok(uri) = uri else {
            return bad_gateway();
        };
        parts.uri = uri;
        strip_hop_by_hop(&mut parts.headers);
        for (name, value) in &self.inject {
            parts.headers.insert(name.clone(), value.clone());
        }
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(answer) => {
                let (mut parts, body) = answer.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Either::Left(body))
            }
            Err(_) => bad_gateway(),
        }
    }
}

fn bad_gateway() -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        b"upstream unreachable\n",
    ))));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

#[tokio::main]
async fn main() {
    let options = Options::parse(
        PROGRAM,
        USAGE,
        &["listen", "upstream", "api-key", "business-id", "user-id"],
    );
    let listen: SocketAddr = options.parsed("listen", "127.0.0.1:18082".parse().unwrap());
    let upstream: Uri = options.parsed("upstream", Uri::from_static("http://127.0.0.1:18080"));
    let Some(upstream) = upstream.authority().cloned() else {
        bench::fail(PROGRAM, "--upstream must be http://HOST:PORT");
    };
    let header = |value: &str| {
        HeaderValue::from_str(value)
            .unwrap_or_else(|_| bench::fail(PROGRAM, "header values must be visible ASCII"))
    };
    let inject = vec![
        (
            HeaderName::from_static("x-api-key"),
            header(options.required("api-key")),
        ),
        (
            HeaderName::from_static("x-business-id"),
            header(options.get("business-id").unwrap_or("bench-business-id")),
        ),
        (
            HeaderName::from_static("x-user-id"),
            header(options.get("user-id").unwrap_or("no-jwt-user")),
        ),
    ];
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    let proxy = Arc::new(Proxy {
        client,
        upstream,
        inject,
    });
    serve(PROGRAM, listen, move |request| {
        let proxy = Arc::clone(&proxy);
        async move { proxy.forward(request).await }
    })
    .await;
}
