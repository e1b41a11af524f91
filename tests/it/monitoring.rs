//! `deploy/monitoring` against the real gateway. After real traffic (presigns, a confirmation, a
//! refused token, a rate-limit and a quota refusal, an upstream 401), `/metrics` is scraped, and
//! every metric the Grafana dashboard's expressions and the alerting rules' expressions name
//! must be one the gateway exports; the label values the alerts match on must be the ones the
//! gateway writes.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use kizen_gateway::standin::Endpoint;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::support::*;

const PREFIX: &str = "kizen_gateway_";

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Every `kizen_gateway_...` metric name in a PromQL expression. A name followed by `:` is a
/// recording rule's (`kizen_gateway:...`), not the gateway's, and is left out.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    for (start, _) in expr.match_indices(PREFIX) {
        if expr[..start].chars().next_back().is_some_and(is_name_char) {
            continue;
        }
        let name: String = expr[start..]
            .chars()
            .take_while(|&c| is_name_char(c))
            .collect();
        if !name.contains(':') {
            names.insert(name);
        }
    }
    names
}

/// The `expr` strings of a Grafana dashboard, anywhere in its panels (rows' panels included).
fn dashboard_exprs(node: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => dashboard_exprs(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| dashboard_exprs(item, out)),
        _ => {}
    }
}

/// The `expr:` values of a Prometheus rules file: a one-line value or a block scalar (`|`), whose
/// lines are those indented deeper than the `expr:` key.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if !value.starts_with('|') && !value.starts_with('>') {
            exprs.push(value.to_owned());
            continue;
        }
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
            .copied()
            .collect();
        exprs.push(block.join("\n"));
    }
    exprs
}

/// The sample names a scrape may hold, from its `# TYPE` lines (so that a family without samples
/// yet counts too): a counter `x` is sampled as `x_total`, a histogram as `x_bucket`, `x_sum` and
/// `x_count`, a gauge as `x`. Plus every sample name actually present.
fn exported_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(family), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "gauge" => &[""],
                other => panic!("a metric type this test does not know: {other} ({family})"),
            };
            names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// Which metrics each file names, by file.
fn names_in_monitoring_files() -> BTreeMap<&'static str, BTreeSet<String>> {
    let dashboard: Value =
        serde_json::from_str(&repo_file("deploy/monitoring/grafana-dashboard.json")).unwrap();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard's expressions: {exprs:?}");
    let dashboard_names = exprs.iter().flat_map(|e| metric_names(e)).collect();

    let rules = rule_exprs(&repo_file("deploy/monitoring/alerts.yaml"));
    assert!(rules.len() >= 6, "the rules' expressions: {rules:?}");
    let rule_names = rules.iter().flat_map(|e| metric_names(e)).collect();

    BTreeMap::from([
        ("deploy/monitoring/grafana-dashboard.json", dashboard_names),
        ("deploy/monitoring/alerts.yaml", rule_names),
    ])
}

#[test]
fn the_name_extraction_sees_suffixes_and_skips_recording_rules() {
    let expr = r#"histogram_quantile(0.99, sum by (le) (rate(kizen_gateway_request_duration_seconds_bucket{route="x"}[5m])))
        / kizen_gateway:ratio5m + kizen_gateway_uploads_issued_total - my_kizen_gateway_other"#;
    assert_eq!(
        metric_names(expr),
        BTreeSet::from([
            "kizen_gateway_request_duration_seconds_bucket".to_owned(),
            "kizen_gateway_uploads_issued_total".to_owned(),
        ])
    );
    let rules = "      - alert: A\n        expr: |\n          sum(kizen_gateway_a_total)\n            /\n          sum(kizen_gateway_b_total)\n        for: 1m\n      - alert: B\n        expr: kizen_gateway_c_total > 0\n";
    assert_eq!(
        rule_exprs(rules),
        [
            "          sum(kizen_gateway_a_total)\n            /\n          sum(kizen_gateway_b_total)",
            "kizen_gateway_c_total > 0",
        ]
    );
    let scrape = "# TYPE kizen_gateway_x counter\n# TYPE kizen_gateway_h_seconds histogram\n# TYPE kizen_gateway_g gauge\nkizen_gateway_g 3\n# EOF\n";
    assert_eq!(
        exported_names(scrape),
        [
            "kizen_gateway_g",
            "kizen_gateway_h_seconds_bucket",
            "kizen_gateway_h_seconds_count",
            "kizen_gateway_h_seconds_sum",
            "kizen_gateway_x_total",
        ]
        .map(String::from)
        .into()
    );
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_name_is_exported() {
    // Families without samples are not exported at all, so every family gets some: a JWKS to
    // fetch (an empty set), and the HS256 secret in a file that is rotated at the end (reloads).
    let jwks = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks", jwks.local_addr().unwrap());
    let router = axum::Router::new().route(
        "/jwks",
        axum::routing::get(|| async { axum::Json(json!({ "keys": [] })) }),
    );
    tokio::spawn(async move { axum::serve(jwks, router).await });
    let secret_file = temp_dir("monitoring").join("jwt-secret");
    std::fs::write(&secret_file, HS256_SECRET).unwrap();

    let gw = TestGateway::builder()
        .without_static_keys()
        .with_admin()
        .with_rate_limit(3, "1h")
        .with_config(&format!(
            "[reload]\ninterval = \"50ms\"\n[[auth.keys]]\nalgorithm = \"HS256\"\nsecret = \"file:{}\"\n\
             [auth.jwks]\nurl = \"{jwks_url}\"\n\
             [quotas]\ntier_claim = \"plan\"\n[quotas.tiers.default]\nmax_outstanding = 100\n[quotas.tiers.pro]\nmax_outstanding = 1\n",
            secret_file.display()
        ))
        .start()
        .await;
    let alice = gw.token("alice");

    // A presign and its confirmation (issued, confirmed, settled; both histograms).
    let issued = gw.issue(&alice).await;
    assert_eq!(gw.confirm(&alice, &issued).await.status(), 200);
    // Kizen refuses the gateway's credentials: 502, outcome upstream_unavailable.
    gw.standin.script(
        Endpoint::Presign,
        respond(401, &[], r#"{"detail":"bad key"}"#),
    );
    assert_problem(gw.presign(&alice).await, 502, "upstream_unavailable").await;
    // A refused token, a confirmation of an unknown upload.
    assert_eq!(gw.presign("not-a-token").await.status(), 401);
    assert_eq!(
        gw.confirm_uuid(&alice, &uuid::Uuid::new_v4().to_string())
            .await
            .status(),
        404
    );
    // The rate limit (a burst of 3: two presigns above, this one, then refused).
    assert_eq!(gw.presign(&alice).await.status(), 200);
    assert_problem(gw.presign(&alice).await, 429, "rate_limited").await;
    // A quota of the tier "pro": one open upload at once.
    let mut claims = claims("bob");
    claims["plan"] = "pro".into();
    let bob = hs256(&claims);
    assert_eq!(gw.presign(&bob).await.status(), 200);
    assert_problem(gw.presign(&bob).await, 429, "too_many_outstanding_uploads").await;

    // A rotated secret file: reloaded within a few reload intervals (50 ms). Polled, with a
    // deadline, until the reload and the JWKS fetch (done at start) show.
    let staged = secret_file.with_extension("staged");
    std::fs::write(&staged, "a-rotated-hs256-secret-0123456789abcdef01").unwrap();
    std::fs::rename(&staged, &secret_file).unwrap();
    let mut scrape = String::new();
    for _ in 0..500 {
        scrape = gw
            .client
            .get(format!("{}/metrics", gw.admin_url.as_ref().unwrap()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if scrape.contains("\nkizen_gateway_reloads_total{")
            && scrape.contains("\nkizen_gateway_jwks_refreshes_total{")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let exported = exported_names(&scrape);
    assert!(
        exported.len() >= 20 && exported.iter().all(|n| n.starts_with(PREFIX)),
        "{exported:?}"
    );

    for (file, names) in names_in_monitoring_files() {
        assert!(names.len() >= 5, "{file} names {names:?}");
        let unknown: Vec<&String> = names.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics the gateway does not export: {unknown:?}\nexported: {exported:?}"
        );
    }

    // The series the alerts and the by-tier panels select, with the label values the gateway
    // writes (a renamed outcome or label would leave an alert silently matching nothing).
    for (series, count) in [
        (
            r#"kizen_gateway_requests_total{route="presign",status="502",outcome="upstream_unavailable"}"#,
            1.0,
        ),
        (
            r#"kizen_gateway_requests_total{route="confirm",status="200",outcome="confirmed"}"#,
            1.0,
        ),
        // alice twice (before the 401 and after it), bob once.
        (
            r#"kizen_gateway_requests_total{route="presign",status="200",outcome="issued"}"#,
            3.0,
        ),
        // Every presign answered, refusals included: 3 issued, the 502, and three 401/429.
        (
            r#"kizen_gateway_request_duration_seconds_count{route="presign"}"#,
            7.0,
        ),
        (
            r#"kizen_gateway_upstream_duration_seconds_count{route="confirm"}"#,
            1.0,
        ),
        (r#"kizen_gateway_rate_limited_total{tier="default"}"#, 1.0),
        (
            r#"kizen_gateway_quota_rejections_total{tier="pro",reason="too_many_outstanding_uploads"}"#,
            1.0,
        ),
        (
            r#"kizen_gateway_confirmation_settles_total{result="settled"}"#,
            1.0,
        ),
        (
            r#"kizen_gateway_uploads_rejected_total{reason="upload_not_found"}"#,
            1.0,
        ),
        (
            r#"kizen_gateway_auth_failures_total{reason="token_malformed"}"#,
            1.0,
        ),
        (
            r#"kizen_gateway_reloads_total{source="file",result="success"}"#,
            1.0,
        ),
        ("kizen_gateway_uploads_issued_total", 3.0),
        ("kizen_gateway_uploads_confirmed_total", 1.0),
    ] {
        assert_eq!(sample(&scrape, series), count, "{series} in\n{scrape}");
    }
}
