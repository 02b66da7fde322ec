//! What the worker records about a run, so that tests and the worker benchmark can read how the
//! token loop and the preview decoder shared the machine: every token step of the generator and
//! every decode of the preview, with the thread it ran on.

use std::thread::ThreadId;
use std::time::Instant;

/// A stretch of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: Instant,
    pub end: Instant,
}

impl Span {
    pub fn seconds(&self) -> f64 {
        self.end.duration_since(self.start).as_secs_f64()
    }

    /// Whether `other` lies entirely within this span.
    pub fn contains(&self, other: &Span) -> bool {
        self.start <= other.start && other.end <= self.end
    }

    pub fn overlaps(&self, other: &Span) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// One token of the generator's loop.
#[derive(Debug, Clone, Copy)]
pub struct TokenStep {
    /// From the end of the previous step (or the start of the batch) to the end of the worker's
    /// handling of this token.
    pub step: Span,
    /// The worker's own part of the step (the observer: events sent, preview work posted).
    pub observer: Span,
    pub thread: ThreadId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeKind {
    /// Patches of codes a run uses.
    Patches,
    /// A true decode of a partial grid.
    Refresh,
    /// The background fill of the code → patch atlas.
    Atlas,
}

/// One decode of the preview decoder.
#[derive(Debug, Clone, Copy)]
pub struct DecodeSpan {
    pub kind: DecodeKind,
    pub span: Span,
    pub thread: ThreadId,
    /// CPU time its threads spent on it (seconds); on a GPU, its wall time.
    pub cost: f64,
    /// It started while a batch was generating.
    pub during_run: bool,
}

/// The latest job's record (cleared when a job starts).
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub job: Option<u64>,
    pub steps: Vec<TokenStep>,
    pub decodes: Vec<DecodeSpan>,
    /// When the job was received, and when its last batch finished generating (before its
    /// final decode).
    pub started: Option<Instant>,
    pub generated: Option<Instant>,
}

impl Timeline {
    /// Token steps that waited on a preview decode: a step whose worker part (the observer)
    /// lasted through a whole decode, or a decode that ran on the token loop's thread.
    pub fn steps_that_waited(&self) -> Vec<usize> {
        self.steps
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                self.decodes
                    .iter()
                    .any(|d| d.thread == s.thread || s.observer.contains(&d.span))
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Decodes that started while a batch was generating.
    pub fn run_decodes(&self) -> impl Iterator<Item = &DecodeSpan> {
        self.decodes.iter().filter(|d| d.during_run)
    }

    /// Token steps that ended while `span` ran (the generator went on meanwhile).
    pub fn steps_during(&self, span: &Span) -> usize {
        self.steps
            .iter()
            .filter(|s| span.start < s.step.end && s.step.end < span.end)
            .count()
    }
}
