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

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
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
        "{}\n[[auth.keys]]\nalgorithm = \"RS256\"\npublic_key_file = \"{}\"\n[[auth.keys]]\nalgorithm = \"EdDSA\"\npublic_key_file = \"{}\"\n",
        upstream_toml(),
        fixture("rsa-public.pem").display(),
        fixture("ed25519-public.pem").display(),
    ));
    assert_valid(&check_config(file.path(), &[]));
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
        "{}\n[[auth.keys]]\nalgorithm = \"RS256\"\npublic_key_file = \"{}\"\n",
        upstream_toml(),
        missing.display()
    ));
    assert_refused(&check_config(file.path(), &[]), "auth.keys[0]", &[]);
}

#[test]
fn a_private_key_given_as_public_key_is_refused_naming_the_key() {
    let file = TempConfig::new(&format!(
        "{}\n[[auth.keys]]\nalgorithm = \"RS256\"\npublic_key_file = \"{}\"\n",
        minimal_toml(),
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
