//! Shared fixtures of the unit tests.

/// The smallest configuration that validates: one HS256 key and literal secrets.
pub const MINIMAL_TOML: &str = r#"
[upstream]
base_url = "http://127.0.0.1:9"
api_key = "value:unit-api-key"
business_id = "value:unit-business"
user_id = "value:unit-user"

[[auth.keys]]
algorithm = "HS256"
secret = "value:0123456789abcdef0123456789abcdef"
"#;
