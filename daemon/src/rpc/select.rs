//! Provider selection: which registration of a function serves a command.
//!
//! Candidates are the `functions` view rows for the command's `fun` (also
//! tried without an `app.` or `mpreg.system.` prefix, the names newer MPREG
//! clients send) whose provider is live. A command's `function_id` must
//! match, its `version_constraint` (semver requirement) must accept the
//! version, and its `locs` must be a subset of the provider's resources.
//! The highest matching version wins; its providers, in provider-id order,
//! take turns (round robin per function name and version).

use std::collections::HashMap;
use std::sync::Mutex;

use mpreg_client::protocol::{ErrorCode, RpcCommand, RpcError};
use mpreg_storage::views::{Catalog, FunctionRow};

/// Prefixes newer MPREG clients put in front of function names.
pub(super) const NAME_PREFIXES: [&str; 2] = ["app.", "mpreg.system."];

/// Round-robin state of provider selection.
#[derive(Default)]
pub struct Selector {
    turns: Mutex<HashMap<(String, String), usize>>,
}

fn version_of(row: &FunctionRow) -> Option<semver::Version> {
    semver::Version::parse(&row.version).ok()
}

/// The live registrations of the best matching version of `cmd`'s
/// function, in provider-id order.
pub fn providers<'a>(
    catalog: &'a Catalog,
    cmd: &RpcCommand,
    is_live: impl Fn(&FunctionRow) -> bool,
) -> Result<Vec<&'a FunctionRow>, RpcError> {
    let candidates: Vec<&FunctionRow> = std::iter::once(cmd.fun.as_str())
        .chain(NAME_PREFIXES.iter().filter_map(|p| cmd.fun.strip_prefix(p)))
        .map(|name| {
            catalog
                .functions_named(name)
                .filter(|r| is_live(r))
                .collect::<Vec<_>>()
        })
        .find(|rows| !rows.is_empty())
        .ok_or_else(|| {
            RpcError::new(
                ErrorCode::UnknownFunction,
                format!("Command not found: {}", cmd.fun),
            )
        })?;
    let requirement = match &cmd.version_constraint {
        Some(c) if !c.trim().is_empty() => Some(semver::VersionReq::parse(c).map_err(|e| {
            RpcError::new(
                ErrorCode::BadRequest,
                format!("invalid version_constraint {c:?}: {e}"),
            )
        })?),
        _ => None,
    };
    let matching: Vec<&FunctionRow> = candidates
        .into_iter()
        .filter(|r| {
            cmd.function_id
                .as_ref()
                .is_none_or(|id| *id == r.function_id)
        })
        .filter(|r| match &requirement {
            Some(req) => version_of(r).is_some_and(|v| req.matches(&v)),
            None => true,
        })
        .filter(|r| cmd.locs.iter().all(|loc| r.resources.contains(loc)))
        .collect();
    let best = matching
        .iter()
        .map(|r| version_of(r))
        .max()
        .ok_or_else(|| {
            RpcError::new(
                ErrorCode::NoMatchingProvider,
                format!(
                    "no provider of {} matches function_id {:?}, version {:?}, locs {:?}",
                    cmd.fun, cmd.function_id, cmd.version_constraint, cmd.locs
                ),
            )
        })?;
    let mut providers: Vec<&FunctionRow> = matching
        .into_iter()
        .filter(|r| version_of(r) == best)
        .collect();
    providers.sort_by(|a, b| a.provider.cmp(&b.provider));
    Ok(providers)
}

impl Selector {
    /// Picks the registration that serves `cmd`, taking turns between
    /// providers of the same version.
    pub fn select(
        &self,
        catalog: &Catalog,
        cmd: &RpcCommand,
        is_live: impl Fn(&FunctionRow) -> bool,
    ) -> Result<FunctionRow, RpcError> {
        let providers = providers(catalog, cmd, is_live)?;
        let key = (providers[0].name.clone(), providers[0].version.clone());
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        let turn = turns.entry(key).or_insert(0);
        let chosen = providers[*turn % providers.len()].clone();
        *turn = turn.wrapping_add(1);
        Ok(chosen)
    }
}
