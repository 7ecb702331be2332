//! Provider selection: which registration of a function serves a command.
//!
//! Candidates are the `functions` view rows for the command's `fun` (also
//! tried without an `app.` or `mpreg.system.` prefix, the names newer MPREG
//! clients send) whose provider is live. A command's `function_id` must
//! match, its `version_constraint` (semver requirement) must accept the
//! version, and its `locs` must be a subset of the provider's resources.
//! The highest matching version wins; its providers, in provider-id order,
//! take turns (round robin per function name and version).
//!
//! The same rules pick, among the catalog summaries of other clusters, the
//! clusters that could serve a command no provider here serves.

use std::collections::HashMap;
use std::sync::Mutex;

use mpreg_client::protocol::{ErrorCode, RpcCommand, RpcError};
use mpreg_storage::federation::live;
use mpreg_storage::views::{Catalog, FunctionRow};

/// Prefixes newer MPREG clients put in front of function names.
pub(super) const NAME_PREFIXES: [&str; 2] = ["app.", "mpreg.system."];

/// Round-robin state of provider selection.
#[derive(Default)]
pub struct Selector {
    turns: Mutex<HashMap<(String, String), usize>>,
}

fn version_of(version: &str) -> Option<semver::Version> {
    semver::Version::parse(version).ok()
}

/// The live registrations of the best matching version of `cmd`'s
/// function, in provider-id order.
pub fn providers<'a>(
    catalog: &'a Catalog,
    cmd: &RpcCommand,
    is_live: impl Fn(&FunctionRow) -> bool,
) -> Result<Vec<&'a FunctionRow>, RpcError> {
    let candidates: Vec<&FunctionRow> = names(cmd)
        .map(|name| {
            catalog
                .functions_named(name)
                .filter(|r| is_live(r))
                .collect::<Vec<_>>()
        })
        .find(|rows| !rows.is_empty())
        .ok_or_else(|| unknown(cmd))?;
    let requirement = requirement(cmd)?;
    let matching: Vec<&FunctionRow> = candidates
        .into_iter()
        .filter(|r| {
            accepts(
                cmd,
                requirement.as_ref(),
                &r.function_id,
                &r.version,
                &r.resources,
            )
        })
        .collect();
    let best = matching
        .iter()
        .map(|r| version_of(&r.version))
        .max()
        .ok_or_else(|| no_match(cmd))?;
    let mut providers: Vec<&FunctionRow> = matching
        .into_iter()
        .filter(|r| version_of(&r.version) == best)
        .collect();
    providers.sort_by(|a, b| a.provider.cmp(&b.provider));
    Ok(providers)
}

/// The other clusters whose catalog summary, live at `now_ms`, serves a
/// function matching `cmd`, each with its best matching version, in
/// cluster order. The same rules as [`providers`] apply.
pub fn remote_providers(
    catalog: &Catalog,
    cmd: &RpcCommand,
    now_ms: u64,
) -> Result<Vec<(String, Option<semver::Version>)>, RpcError> {
    let summaries: Vec<_> = catalog
        .remote_catalogs()
        .filter(|row| live(row, now_ms))
        .collect();
    let offered = |name: &str| {
        summaries
            .iter()
            .flat_map(|row| {
                row.ad
                    .summary
                    .functions
                    .iter()
                    .filter(move |f| f.name == name)
                    .map(move |f| (row.ad.cluster_id.as_str(), f))
            })
            .collect::<Vec<_>>()
    };
    let candidates = names(cmd)
        .map(offered)
        .find(|found| !found.is_empty())
        .ok_or_else(|| unknown(cmd))?;
    let requirement = requirement(cmd)?;
    let mut best: Vec<(String, Option<semver::Version>)> = Vec::new();
    for (cluster, f) in candidates {
        if !accepts(
            cmd,
            requirement.as_ref(),
            &f.function_id,
            &f.version,
            &f.resources,
        ) {
            continue;
        }
        let version = version_of(&f.version);
        match best.iter_mut().find(|(c, _)| c == cluster) {
            Some((_, held)) => *held = (*held).clone().max(version),
            None => best.push((cluster.to_string(), version)),
        }
    }
    if best.is_empty() {
        return Err(no_match(cmd));
    }
    best.sort();
    Ok(best)
}

/// The names `cmd` may be registered under: as sent, then without a prefix.
fn names(cmd: &RpcCommand) -> impl Iterator<Item = &str> {
    std::iter::once(cmd.fun.as_str())
        .chain(NAME_PREFIXES.iter().filter_map(|p| cmd.fun.strip_prefix(p)))
}

fn requirement(cmd: &RpcCommand) -> Result<Option<semver::VersionReq>, RpcError> {
    match &cmd.version_constraint {
        Some(c) if !c.trim().is_empty() => semver::VersionReq::parse(c).map(Some).map_err(|e| {
            RpcError::new(
                ErrorCode::BadRequest,
                format!("invalid version_constraint {c:?}: {e}"),
            )
        }),
        _ => Ok(None),
    }
}

/// Whether a registration serves `cmd`: its `function_id`, version
/// requirement and `locs`.
fn accepts(
    cmd: &RpcCommand,
    requirement: Option<&semver::VersionReq>,
    function_id: &str,
    version: &str,
    resources: &[String],
) -> bool {
    cmd.function_id.as_ref().is_none_or(|id| id == function_id)
        && requirement.is_none_or(|req| version_of(version).is_some_and(|v| req.matches(&v)))
        && cmd.locs.iter().all(|loc| resources.contains(loc))
}

fn unknown(cmd: &RpcCommand) -> RpcError {
    RpcError::new(
        ErrorCode::UnknownFunction,
        format!("Command not found: {}", cmd.fun),
    )
}

fn no_match(cmd: &RpcCommand) -> RpcError {
    RpcError::new(
        ErrorCode::NoMatchingProvider,
        format!(
            "no provider of {} matches function_id {:?}, version {:?}, locs {:?}",
            cmd.fun, cmd.function_id, cmd.version_constraint, cmd.locs
        ),
    )
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
