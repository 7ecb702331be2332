//! mpreg-query: read-only SQL over the views and the log (DataFusion table
//! providers and the SQL session).
//!
//! This crate is the home of the SQL inspection surface; it depends only on
//! `mpreg-storage` and is used by the daemon (`/sql`, `mpreg-daemon sql`).
//! The tables arrive with the SQL issue; until then it exports nothing.
