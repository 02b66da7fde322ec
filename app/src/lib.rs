//! llamagen-studio: a desktop app to generate images token by token with LlamaGen models and
//! explore the sampler. The UI thread draws and sends commands; a worker thread owns the model
//! and streams per-token events back.

pub mod app;
pub mod decoder;
pub mod explore;
pub mod preview;
pub mod settings;
pub mod timeline;
pub mod ui;
pub mod worker;

pub use app::StudioApp;
