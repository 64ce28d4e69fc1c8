//! streamvault: a self-hosted, wire-compatible Amazon Kinesis Video Streams service.
//!
//! Layout: [`config`] (settings), [`clock`] (injected time), [`model`] (validated domain
//! values), [`error`] (service error kinds), [`store`] (encrypted fragment objects, the
//! only place object keys are built), [`index`] (fragment index trait + SQLite),
//! [`streams`] (control-plane rules), [`gc`] (deletion sweeps), [`playback`] (GetClip,
//! HLS and DASH packagers), [`images`] (GetImages and image generation), [`api`] (one
//! router per API family), [`listener`] (accept loop and connection limits), [`server`]
//! (assembly and `run`), [`check`] (invariant checker) and [`cli`] (the `streamvault`
//! command); [`retention`] expires fragments; [`fsperm`] warns about secret files others
//! can read; [`operations`] is the catalogue of modeled AWS operations; [`notify`]
//! delivers stream notifications to webhooks.

pub mod api;
pub mod auth;
pub mod check;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod error;
pub mod fragmenter;
pub mod fsperm;
pub mod gc;
pub mod images;
pub mod index;
pub mod ingest;
pub mod listener;
pub mod media;
pub mod memtrim;
pub mod metrics;
pub mod mkv;
pub mod model;
pub mod notify;
pub mod operations;
pub mod playback;
pub mod retention;
pub mod server;
pub mod store;
pub mod streams;
pub mod tls;
