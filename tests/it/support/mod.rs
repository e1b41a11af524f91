//! The test harness, written once for every test module: the gateway on a free port in front of
//! the recording Kizen stand-in (`gateway`, with a builder and its knobs), scripted upstream
//! answers (`upstream`), token minting (`tokens`), raw HTTP (`http`), assertion helpers
//! (`assertions`), log capture (`capture`), real Redis servers (`redis`), a store that fails on
//! demand (`faulty_store`) and temporary folders.

pub mod assertions;
pub mod capture;
pub mod faulty_store;
pub mod gateway;
pub mod http;
pub mod redis;
pub mod tokens;
pub mod upstream;

use std::path::PathBuf;

pub use assertions::*;
pub use capture::LogCapture;
pub use gateway::*;
pub use http::*;
pub use tokens::*;
pub use upstream::*;

/// A new empty folder under the system's temp dir, named after `name`.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kizen-gw-{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
