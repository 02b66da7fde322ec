//! llamagen-studio: a desktop app to generate images token by token with LlamaGen models and
//! explore the sampler. The UI thread draws and sends commands; a worker thread owns the model
//! and streams per-token events back.
//!
//! Modules import in one direction: [`frame`] (one eframe frame) → [`panels`] (drawing, which
//! returns the user's [`app::Action`]s) → [`app`] (the state) → [`worker`] → [`decoder`] →
//! [`message`] (what the threads say to each other), with [`preview`], [`settings`],
//! [`explore`] and [`timeline`] as leaves beside them.

pub mod app;
pub mod decoder;
pub mod explore;
pub mod frame;
pub mod message;
pub mod panels;
pub mod preview;
pub mod settings;
pub mod timeline;
pub mod worker;

pub use app::StudioApp;
