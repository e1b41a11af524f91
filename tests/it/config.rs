//! Configuration: the commented default file holds every option, `check-config` accepts a valid
//! file and refuses a bad one with one line that names the option (and never a secret), and
//! `KIZEN_GATEWAY_*` environment variables override the file.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
};

use figment::{
    Figment,
    providers::{Format, Toml},
};
use kizen_gateway::{Config, config::DEFAULT_TOML};

use crate::support::{LogCapture, fixture};

const API_KEY: &str = "cfgtest-api-key-4b1d7e0c93a2";
const BUSINESS_ID: &str = "cfgtest-business-8e6f21";
const USER_ID: &str = "cfgtest-user-0c5d3a";
const HS256_SECRET: &str = "cfgtest-hs256-secret-5f0e9d8c7b6a5f4e3d2c1b0a";
/// Literal secret values given with `value:`: none may ever appear in the binary's output.
const SECRETS: [&str; 4] = [API_KEY, BUSINESS_ID, USER_ID, HS256_SECRET];

fn upstream_toml() -> String {
    format!(
        "[upstream]\napi_key = \"value:{API_KEY}\"\nbusiness_id = \"value:{BUSINESS_ID}\"\nuser_id = \"value:{USER_ID}\"\n"
    )
}

/// The audience of this gateway's tokens: required with public keys or a JWKS.
const AUDIENCES: &str = "[auth]\naudiences = [\"kizen-uploads\"]\n";

fn hs256_key_toml() -> String {
    format!("[[auth.keys]]\nalgorithm = \"HS256\"\nsecret = \"value:{HS256_SECRET}\"\n")
}

/// The smallest layer that makes the defaults a working configuration.
fn minimal_toml() -> String {
    format!("{}\n{}", upstream_toml(), hs256_key_toml())
}

/// The minimal layer with the API key read from an environment variable that is not set.
fn env_api_key_toml() -> String {
    format!(
        "[upstream]\napi_key = \"env:SOME_UNSET_VAR\"\nbusiness_id = \"value:{BUSINESS_ID}\"\nuser_id = \"value:{USER_ID}\"\n\n{}",
        hs256_key_toml()
    )
}

/// A configuration file under the temp dir, removed when dropped.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(contents: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "kizen-gateway-config-test-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `kizen-gateway check-config --config <file>` with only PATH and `env` in its environment.
fn check_config(file: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kizen-gateway"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("check-config")
        .arg("--config")
        .arg(file);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_no_secret(output: &Output, extra: &[&str]) {
    let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
    for secret in SECRETS.iter().chain(extra) {
        assert!(!all.contains(secret), "output shows a secret: {all}");
    }
}

fn assert_valid(output: &Output) {
    assert!(
        output.status.success(),
        "check-config failed: {}",
        text(&output.stderr)
    );
    assert_eq!(text(&output.stdout).trim(), "configuration is valid");
    assert_no_secret(output, &[]);
}

/// Asserts a refusal: non-zero exit, one line of stderr naming `option`. Returns that line.
fn assert_refused(output: &Output, option: &str, extra_secrets: &[&str]) -> String {
    let stderr = text(&output.stderr);
    assert!(
        !output.status.success(),
        "check-config accepted a bad file; stdout: {}",
        text(&output.stdout)
    );
    assert_ne!(output.status.code(), Some(0));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line of stderr: {stderr:?}");
    assert!(stderr.ends_with('\n'));
    assert!(
        lines[0].contains(option),
        "stderr names {option}: {stderr:?}"
    );
    assert!(
        !text(&output.stdout).contains("configuration is valid"),
        "no success message"
    );
    assert_no_secret(output, extra_secrets);
    lines[0].to_owned()
}

#[test]
fn the_default_file_is_the_compiled_in_defaults() {
    let on_disk =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml"))
            .unwrap();
    assert_eq!(on_disk, DEFAULT_TOML);
}

#[test]
fn the_default_file_holds_every_option() {
    let on_disk =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml"))
            .unwrap();
    // Every field of `Config` is required by serde (except optional ones and `auth.keys`), so the
    // file alone plus the minimal layer deserializing proves that no option is missing from it...
    let config: Config = Figment::from(Toml::string(&on_disk))
        .merge(Toml::string(&minimal_toml()))
        .extract()
        .expect("the default file plus a minimal layer deserializes");
    config.validate().expect("and validates");
    // ...and the optional ones are documented there, commented out.
    for optional in [
        "# kid = ",
        "# public_key_file = ",
        "# issuer = ",
        "# url = ",
        "# user_id_claim = ",
    ] {
        assert!(on_disk.contains(optional), "{optional:?} is documented");
    }
    // The defaults are the documented ones.
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.server.max_concurrent_requests, 1024);
    assert_eq!(config.presign.rate_limit_burst, 10);
    assert_eq!(config.presign.allowed_sources.len(), 11);
    assert!(config.cors.allowed_origins.is_empty());
    assert_eq!(config.auth.user_claim, "sub");
    assert!(!config.auth.allow_any_audience);
    assert!(config.auth.keys[0].issuer.is_none());
    assert!(config.auth.jwks.issuer.is_none());
    assert_eq!(config.upstream.base_url, "https://app.kizen.com");
    assert_eq!(config.auth.keys.len(), 1);
}

#[test]
fn the_library_layers_the_defaults_under_a_minimal_layer() {
    let config = Config::from_toml_layers(&[&minimal_toml()]).expect("valid");
    assert_eq!(config.auth.keys.len(), 1);
    assert_eq!(config.store.max_uploads, 100000);
    // The defaults alone lack a verification key: refused, naming the option.
    let error = Config::from_toml_layers(&[&upstream_toml()]).unwrap_err();
    assert!(error.to_string().contains("auth.keys"), "{error}");
    // Debug output of a loaded configuration redacts literal secrets.
    let debug = format!("{config:?}");
    for secret in SECRETS {
        assert!(!debug.contains(secret), "{debug}");
    }
}

#[test]
fn check_config_accepts_a_valid_file() {
    let file = TempConfig::new(&minimal_toml());
    assert_valid(&check_config(file.path(), &[]));
}

#[test]
fn check_config_accepts_a_file_with_public_keys() {
    let file = TempConfig::new(&format!(
        "{}\n{AUDIENCES}\n[[auth.keys]]\nalgorithm = \"RS256\"\npublic_key_file = \"{}\"\n[[auth.keys]]\nalgorithm = \"EdDSA\"\npublic_key_file = \"{}\"\n",
        upstream_toml(),
        fixture("rsa-public.pem").display(),
        fixture("ed25519-public.pem").display(),
    ));
    assert_valid(&check_config(file.path(), &[]));
}

fn rs256_key_toml(issuer: Option<&str>) -> String {
    let issuer = issuer.map_or(String::new(), |i| format!("issuer = \"{i}\"\n"));
    format!(
        "[[auth.keys]]\nalgorithm = \"RS256\"\npublic_key_file = \"{}\"\n{issuer}",
        fixture("rsa-public.pem").display()
    )
}

fn hs256_key_for(issuer: &str) -> String {
    format!("{}issuer = \"{issuer}\"\n", hs256_key_toml())
}

const JWKS_TOML: &str = "[auth.jwks]\nurl = \"https://idp.example.com/.well-known/jwks.json\"\n";
const IDP_A: &str = "https://idp-a.example.com/";
const IDP_B: &str = "https://idp-b.example.com/";

#[test]
fn check_config_refuses_a_jwks_or_public_key_without_audiences() {
    for keys in [rs256_key_toml(None), JWKS_TOML.to_owned()] {
        // An HS256 key beside them changes nothing: the public key or JWKS is there.
        let file = TempConfig::new(&format!("{}\n{keys}", minimal_toml()));
        let line = assert_refused(&check_config(file.path(), &[]), "auth.audiences", &[]);
        assert!(
            line.contains("auth.allow_any_audience"),
            "the error names the escape: {line}"
        );

        // With an audience: valid.
        let file = TempConfig::new(&format!("{}\n{AUDIENCES}\n{keys}", minimal_toml()));
        assert_valid(&check_config(file.path(), &[]));
    }
    // An empty list is no audience.
    let file = TempConfig::new(&format!(
        "{}\n[auth]\naudiences = []\n{JWKS_TOML}",
        upstream_toml()
    ));
    assert_refused(&check_config(file.path(), &[]), "auth.audiences", &[]);
    // HS* shared secrets are this gateway's own: no audience needed.
    let file = TempConfig::new(&minimal_toml());
    assert_valid(&check_config(file.path(), &[]));
}

#[test]
fn allow_any_audience_accepts_a_public_key_without_audiences() {
    for keys in [rs256_key_toml(None), JWKS_TOML.to_owned()] {
        let file = TempConfig::new(&format!(
            "{}\n[auth]\nallow_any_audience = true\n{keys}",
            upstream_toml()
        ));
        assert_valid(&check_config(file.path(), &[]));
        // The environment can say it too.
        let file = TempConfig::new(&format!("{}\n{keys}", upstream_toml()));
        assert_valid(&check_config(
            file.path(),
            &[("KIZEN_GATEWAY_AUTH__ALLOW_ANY_AUDIENCE", "true")],
        ));
    }
}

/// What building the app (as `serve` does at start) logs for this configuration.
fn start_up_logs(layers: &[&str]) -> String {
    let config = Config::from_toml_layers(layers).expect("valid");
    let capture = LogCapture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(capture.clone())
        .finish();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        runtime
            .block_on(kizen_gateway::App::from_config(config))
            .expect("the app builds");
    });
    capture.text()
}

#[test]
fn allow_any_audience_is_warned_about_at_start() {
    let key = rs256_key_toml(None);
    let logs = start_up_logs(&[&minimal_toml(), "[auth]\nallow_any_audience = true\n", &key]);
    let warning = logs
        .lines()
        .find(|line| line.contains("WARN") && line.contains("auth.allow_any_audience"))
        .unwrap_or_else(|| panic!("no warning naming auth.allow_any_audience in {logs:?}"));
    assert!(warning.contains("any other application"), "{warning}");

    // With audiences the option has no effect, and nothing is said.
    let logs = start_up_logs(&[
        &minimal_toml(),
        "[auth]\nallow_any_audience = true\naudiences = [\"kizen-uploads\"]\n",
        &key,
    ]);
    assert!(!logs.contains("allow_any_audience"), "{logs}");
}

#[test]
fn several_issuers_need_each_key_tied_to_one_of_them() {
    let issuers =
        format!("[auth]\nissuers = [\"{IDP_A}\", \"{IDP_B}\"]\naudiences = [\"kizen-uploads\"]\n");
    // One layer: a later layer's [[auth.keys]] would replace the earlier ones.
    let refused = |parts: &[&str], option: &str| {
        let error = Config::from_toml(&parts.join("\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains(option), "{option} in {error}");
        error
    };

    // A key without an issuer, beside one tied to A: it would sign for B's users too.
    let error = refused(
        &[
            &upstream_toml(),
            &issuers,
            &hs256_key_for(IDP_A),
            &rs256_key_toml(None),
        ],
        "auth.keys[1].issuer",
    );
    assert!(error.contains("more than one issuer"), "{error}");
    // The JWKS too.
    refused(
        &[&upstream_toml(), &issuers, &hs256_key_for(IDP_A), JWKS_TOML],
        "auth.jwks.issuer",
    );
    // A key's issuer is one of auth.issuers.
    let error = refused(
        &[
            &upstream_toml(),
            &issuers,
            &hs256_key_for(IDP_A),
            &rs256_key_toml(Some("https://idp-c.example.com/")),
        ],
        "auth.keys[1].issuer",
    );
    assert!(error.contains("auth.issuers"), "{error}");
    let error = refused(
        &[
            &upstream_toml(),
            &format!("[auth]\nissuers = [\"{IDP_A}\"]\n"),
            &hs256_key_for(IDP_B),
        ],
        "auth.keys[0].issuer",
    );
    assert!(error.contains("auth.issuers"), "{error}");
    // Two issuers named by keys alone are several issuers as well.
    refused(
        &[
            &upstream_toml(),
            AUDIENCES,
            &hs256_key_for(IDP_A),
            &rs256_key_toml(Some(IDP_B)),
            &rs256_key_toml(None),
        ],
        "auth.keys[2].issuer",
    );
    // An issuer never holds whitespace (a space separates issuer and subject in user ids).
    refused(
        &[
            &upstream_toml(),
            "[auth]\nissuers = [\"https://idp.example.com/ x\"]\n",
            &hs256_key_toml(),
        ],
        "auth.issuers",
    );

    // Every key tied to its issuer: valid, through check-config as well.
    let jwks_b = format!("{JWKS_TOML}issuer = \"{IDP_B}\"\n");
    let layers = [
        upstream_toml(),
        issuers.clone(),
        hs256_key_for(IDP_A),
        rs256_key_toml(Some(IDP_A)),
        jwks_b,
    ];
    let config = Config::from_toml(&layers.join("\n")).unwrap();
    assert!(config.auth.multiple_issuers());
    let file = TempConfig::new(&layers.join("\n"));
    assert_valid(&check_config(file.path(), &[]));
    // And check-config refuses the untied key in one line naming it.
    let file = TempConfig::new(&format!(
        "{}\n{issuers}\n{}\n{}",
        upstream_toml(),
        hs256_key_for(IDP_A),
        rs256_key_toml(None)
    ));
    assert_refused(&check_config(file.path(), &[]), "auth.keys[1].issuer", &[]);
}

#[test]
fn one_issuer_needs_no_key_issuer() {
    let config = Config::from_toml(&format!(
        "{}\n[auth]\nissuers = [\"{IDP_A}\"]\n{}\n{}",
        upstream_toml(),
        hs256_key_toml(),
        hs256_key_for(IDP_A)
    ))
    .unwrap();
    assert_eq!(config.auth.keys.len(), 2);
    assert!(!config.auth.multiple_issuers());
}

#[test]
fn a_value_out_of_range_is_refused_naming_the_option() {
    let file = TempConfig::new(&format!(
        "[server]\nmax_concurrent_requests = 0\n{}",
        minimal_toml()
    ));
    let line = assert_refused(
        &check_config(file.path(), &[]),
        "server.max_concurrent_requests",
        &[],
    );
    assert!(line.contains("at least 1"), "{line}");
}

#[test]
fn a_malformed_duration_is_refused_naming_the_option() {
    let file = TempConfig::new(&format!(
        "{}\n[presign]\nrate_limit_period = \"soon\"\n",
        minimal_toml()
    ));
    assert_refused(
        &check_config(file.path(), &[]),
        "presign.rate_limit_period",
        &[],
    );
}

#[test]
fn an_unknown_option_is_refused_naming_it() {
    let file = TempConfig::new(&format!("[server]\nlisen = \"x\"\n{}", minimal_toml()));
    assert_refused(&check_config(file.path(), &[]), "lisen", &[]);

    let file = TempConfig::new(&format!("{}\n[uploads]\nmax = 1\n", minimal_toml()));
    assert_refused(&check_config(file.path(), &[]), "uploads", &[]);
}

#[test]
fn an_unknown_source_is_refused_naming_the_option() {
    let file = TempConfig::new(&format!(
        "{}\n[presign]\nallowed_sources = [\"nope\"]\n",
        minimal_toml()
    ));
    assert_refused(
        &check_config(file.path(), &[]),
        "presign.allowed_sources",
        &[],
    );
}

#[test]
fn a_secret_written_as_a_bare_string_is_refused_without_echoing_it() {
    let pasted = "sk_live_pasted_secret_6a7b8c9d";
    let file = TempConfig::new(&format!(
        "[upstream]\napi_key = \"{pasted}\"\nbusiness_id = \"value:{BUSINESS_ID}\"\nuser_id = \"value:{USER_ID}\"\n\n{}",
        hs256_key_toml()
    ));
    assert_refused(
        &check_config(file.path(), &[]),
        "upstream.api_key",
        &[pasted],
    );

    // The same for a key secret.
    let file = TempConfig::new(&format!(
        "{}\n[[auth.keys]]\nalgorithm = \"HS256\"\nsecret = \"{pasted}\"\n",
        upstream_toml()
    ));
    assert_refused(&check_config(file.path(), &[]), "secret", &[pasted]);
}

#[test]
fn a_missing_environment_variable_is_refused_naming_the_option() {
    let file = TempConfig::new(&env_api_key_toml());
    let line = assert_refused(&check_config(file.path(), &[]), "api_key", &[]);
    assert!(line.contains("upstream.api_key"), "{line}");
    assert!(
        line.contains("SOME_UNSET_VAR"),
        "names the variable: {line}"
    );
}

#[test]
fn a_missing_public_key_file_is_refused_naming_the_key() {
    let missing = std::env::temp_dir().join(format!(
        "kizen-gateway-config-test-{}-no-such-key.pem",
        std::process::id()
    ));
    let file = TempConfig::new(&format!(
        "{}\n{AUDIENCES}\n[[auth.keys]]\nalgorithm = \"RS256\"\npublic_key_file = \"{}\"\n",
        upstream_toml(),
        missing.display()
    ));
    assert_refused(&check_config(file.path(), &[]), "auth.keys[0]", &[]);
}

#[test]
fn a_private_key_given_as_public_key_is_refused_naming_the_key() {
    let file = TempConfig::new(&format!(
        "{}\n{AUDIENCES}\n{}\n[[auth.keys]]\nalgorithm = \"RS256\"\npublic_key_file = \"{}\"\n",
        upstream_toml(),
        hs256_key_toml(),
        fixture("rsa-private.pem").display()
    ));
    let pem = std::fs::read_to_string(fixture("rsa-private.pem")).unwrap();
    let body_line = pem.lines().nth(1).unwrap();
    // The HS256 key is [0], this one [1].
    assert_refused(
        &check_config(file.path(), &[]),
        "auth.keys[1]",
        &[body_line],
    );
}

#[test]
fn a_short_hmac_secret_is_refused_without_echoing_it() {
    let short = "short-hmac-secret-x9";
    let file = TempConfig::new(&format!(
        "{}\n[[auth.keys]]\nalgorithm = \"HS256\"\nsecret = \"value:{short}\"\n",
        upstream_toml()
    ));
    assert_refused(&check_config(file.path(), &[]), "auth.keys[0]", &[short]);
}

#[test]
fn a_missing_config_file_is_refused() {
    let missing = std::env::temp_dir().join(format!(
        "kizen-gateway-config-test-{}-absent.toml",
        std::process::id()
    ));
    assert_refused(&check_config(&missing, &[]), "--config", &[]);
}

#[test]
fn an_environment_variable_overrides_the_file_with_a_bad_value() {
    let file = TempConfig::new(&minimal_toml());
    assert_valid(&check_config(file.path(), &[]));
    let output = check_config(
        file.path(),
        &[("KIZEN_GATEWAY_SERVER__MAX_CONCURRENT_REQUESTS", "0")],
    );
    assert_refused(&output, "server.max_concurrent_requests", &[]);
}

#[test]
fn an_environment_variable_supplies_a_secret_the_file_cannot() {
    let file = TempConfig::new(&env_api_key_toml());
    assert_refused(&check_config(file.path(), &[]), "upstream.api_key", &[]);
    assert_valid(&check_config(
        file.path(),
        &[("KIZEN_GATEWAY_UPSTREAM__API_KEY", "value:abc")],
    ));
    // The variable the file names works too.
    assert_valid(&check_config(
        file.path(),
        &[("SOME_UNSET_VAR", "from-the-environment")],
    ));
}

#[test]
fn a_bare_secret_in_an_environment_override_is_not_echoed() {
    let pasted = "sk_live_env_pasted_1f2e3d4c";
    let file = TempConfig::new(&minimal_toml());
    let output = check_config(file.path(), &[("KIZEN_GATEWAY_UPSTREAM__API_KEY", pasted)]);
    // figment names an environment key in upper case.
    let line = assert_refused(&output, "", &[pasted]);
    assert!(
        line.to_ascii_lowercase().contains("upstream.api_key"),
        "{line}"
    );
}

#[test]
fn a_syntax_error_on_a_secret_line_does_not_echo_the_line() {
    // TOML syntax errors quote the offending line; the line holds the secret.
    for (broken, line_number) in [
        (format!("api_key = \"value:{API_KEY}\n"), 2),
        (format!("api_key = value:{API_KEY}\n"), 2),
        (
            format!("api_key = \"value:{API_KEY}\"\napi_key = \"value:{API_KEY}\"\n"),
            3,
        ),
    ] {
        let file = TempConfig::new(&format!(
            "[upstream]\n{broken}business_id = \"value:{BUSINESS_ID}\"\n"
        ));
        let line = assert_refused(&check_config(file.path(), &[]), "TOML", &[]);
        assert!(
            line.contains(&format!("line {line_number}")),
            "the position is kept: {line}"
        );
    }
}

#[test]
fn the_redis_example_is_a_valid_configuration() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/redis.example.toml"
    ))
    .unwrap();
    let keys = "[[auth.keys]]\nalgorithm = \"HS256\"\nsecret = \"value:0123456789abcdef0123456789abcdef\"\n";
    let config = kizen_gateway::Config::from_toml_layers(&[&example, keys]).unwrap();
    assert_eq!(config.store.kind, kizen_gateway::config::StoreKind::Redis);
    assert_eq!(config.quotas.tiers.len(), 2);
}

#[test]
fn a_password_inside_a_redis_url_is_refused_without_being_echoed() {
    let keys = "[[auth.keys]]\nalgorithm = \"HS256\"\nsecret = \"value:0123456789abcdef0123456789abcdef\"\n";
    let store = "[store]\nkind = \"redis\"\n[store.redis]\nurls = [\"redis://:hunter2-redis@127.0.0.1:6379\"]\n";
    let error = kizen_gateway::Config::from_toml_layers(&[keys, store])
        .unwrap_err()
        .to_string();
    assert!(error.contains("store.redis.password"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
}

#[test]
fn an_unreachable_redis_fails_the_start_naming_the_store() {
    // A port that was free a moment ago: nothing answers there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = TempConfig::new(&format!(
        "{}[store]\nkind = \"redis\"\n[store.redis]\nurls = [\"redis://127.0.0.1:{port}\"]\npassword = \"value:hunter2-redis\"\n",
        minimal_toml()
    ));
    let output = check_config(file.path(), &[]);
    assert_refused(&output, "store.redis", &["hunter2-redis"]);
}

#[test]
fn a_claim_lease_shorter_than_a_forward_and_its_settle_is_refused_naming_the_options() {
    // The reviewer's case: a 1s lease in front of a 10s upstream timeout.
    let file = TempConfig::new(&format!(
        "{}request_timeout = \"10s\"\n{}\n[confirm]\nclaim_lease = \"1s\"\n",
        upstream_toml(),
        hs256_key_toml()
    ));
    let line = assert_refused(&check_config(file.path(), &[]), "confirm.claim_lease", &[]);
    assert!(line.contains("upstream.request_timeout"), "{line}");
    assert!(line.contains("store.redis.operation_timeout"), "{line}");
    // 10s + 2 x 250ms + 5s: just enough is accepted.
    let file = TempConfig::new(&format!(
        "{}request_timeout = \"10s\"\n{}\n[confirm]\nclaim_lease = \"15500ms\"\n",
        upstream_toml(),
        hs256_key_toml()
    ));
    assert_valid(&check_config(file.path(), &[]));
}

#[test]
fn a_per_user_store_bound_below_a_tiers_outstanding_cap_is_refused() {
    let file = TempConfig::new(&format!(
        "{}\n[store]\nmax_uploads_per_user = 20\n",
        minimal_toml()
    ));
    let line = assert_refused(
        &check_config(file.path(), &[]),
        "store.max_uploads_per_user",
        &[],
    );
    assert!(
        line.contains("quotas.tiers.default.max_outstanding"),
        "{line}"
    );
}

#[test]
fn command_line_overrides_are_validated_with_the_rest() {
    let file = TempConfig::new(&minimal_toml());
    let admin = Config::from_toml(&minimal_toml()).unwrap().admin.listen;
    // `--listen` on the admin address: refused, as the same value in the file would be.
    let output = Command::new(env!("CARGO_BIN_EXE_kizen-gateway"))
        .env_clear()
        .arg("check-config")
        .arg("--config")
        .arg(file.path())
        .arg("--listen")
        .arg(admin.to_string())
        .output()
        .expect("the binary runs");
    assert_refused(&output, "admin.listen", &[]);
}

/// `[store.redis.sentinel]`: each mistake is refused at load, naming the field at fault.
#[test]
fn sentinel_settings_are_checked_at_load_naming_the_field() {
    let keys = "[[auth.keys]]\nalgorithm = \"HS256\"\nsecret = \"value:0123456789abcdef0123456789abcdef\"\n";
    let sentinel = |redis: &str, sentinel: &str| {
        let store = format!(
            "[store]\nkind = \"redis\"\n[store.redis]\n{redis}\n[store.redis.sentinel]\n{sentinel}\n"
        );
        kizen_gateway::Config::from_toml_layers(&[keys, &store]).map(|c| c.store.redis)
    };
    let urls = "urls = [\"redis://s1:26379\", \"redis://s2:26379\"]";
    let valid = sentinel(
        "wait_for_replicas = 1",
        &format!("master_name = \"mymaster\"\n{urls}"),
    )
    .unwrap();
    let parsed = valid.sentinel.unwrap();
    assert_eq!(parsed.master_name, "mymaster");
    assert_eq!(parsed.urls.len(), 2);
    assert_eq!(valid.wait_for_replicas, 1);

    let refusals = [
        (
            "",
            format!("master_name = \" \"\n{urls}"),
            "store.redis.sentinel.master_name",
        ),
        (
            "",
            "master_name = \"m\"\nurls = []".to_owned(),
            "store.redis.sentinel.urls",
        ),
        (
            "",
            "master_name = \"m\"\nurls = [\"redis://s1:26379\", \"rediss://s2:26379\"]".to_owned(),
            "store.redis.sentinel.urls",
        ),
        (
            "cluster = true",
            format!("master_name = \"m\"\n{urls}"),
            "store.redis.sentinel",
        ),
        (
            "",
            "master_name = \"m\"\nurls = [\"redis://:hunter2-sentinel@s1:26379\"]".to_owned(),
            "store.redis.sentinel.password",
        ),
        (
            "",
            "urls = [\"redis://s1:26379\"]".to_owned(),
            "master_name",
        ),
    ];
    for (redis, table, field) in refusals {
        let error = sentinel(redis, &table).unwrap_err().to_string();
        assert!(error.contains(field), "{table}: {error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}

#[test]
fn unreachable_sentinels_fail_the_start_naming_them_without_the_passwords() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = TempConfig::new(&format!(
        "{}[store]\nkind = \"redis\"\n[store.redis]\npassword = \"value:hunter2-redis\"\n[store.redis.sentinel]\nmaster_name = \"mymaster\"\nurls = [\"redis://127.0.0.1:{port}\"]\npassword = \"value:hunter2-sentinel\"\n",
        minimal_toml()
    ));
    let output = check_config(file.path(), &[]);
    assert_refused(
        &output,
        "store.redis.sentinel",
        &["hunter2-redis", "hunter2-sentinel"],
    );
}

/// figment's unescaping panics (or drops characters) on a quoted environment value with a
/// non-ASCII character before an escape; the gateway refuses such a value by name instead (found
/// by the `config_load` fuzz target; fuzz/corpus/config_load/regression-figment-env-escape-*).
#[test]
fn a_non_ascii_quoted_environment_value_with_an_escape_is_refused_by_name() {
    let file = TempConfig::new(&minimal_toml());
    for value in [
        "\"\u{e9}\\n\"",
        "[\"r\u{e9}\\yk\"]",
        "\"\u{e9}\u{e9}\\t-secret\"",
    ] {
        let output = check_config(file.path(), &[("KIZEN_GATEWAY_SERVER__LISTEN", value)]);
        let line = assert_refused(&output, "KIZEN_GATEWAY_SERVER__LISTEN", &[value]);
        assert!(line.contains("backslash escape must be ASCII"), "{line}");
        assert!(!text(&output.stderr).contains("panicked"), "{line}");
    }
    // The same text with ASCII only reaches figment and its own error.
    let output = check_config(file.path(), &[("KIZEN_GATEWAY_SERVER__LISTEN", "\"e\\n\"")]);
    assert_refused(&output, "server.listen", &[]);
}
