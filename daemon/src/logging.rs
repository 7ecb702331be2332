//! Log setup: `tracing` with `RUST_LOG`-style directives (`--log`) and text
//! or JSON lines (`--log-format`) on stderr; colours only on a terminal.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::error::{Error, Result};

/// Installs the global subscriber; call once, from the binary.
pub fn init(directives: &str, format: LogFormat) -> Result<()> {
    let filter = EnvFilter::try_new(directives)
        .map_err(|e| Error::InvalidSetting(format!("--log {directives:?}: {e}")))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| Error::InvalidSetting(format!("logging: {e}")))
}
