//! How forward passes become tokens: one token a pass (sequential), several a pass with exact
//! speculative Jacobi decoding, or several rows at once with ZipAR.

use serde::{Deserialize, Serialize};

/// The decoding strategy of a run (the whole batch shares it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Decoding {
    /// One token per forward pass, in raster order (the official `generate()`).
    #[default]
    Sequential,
    /// Speculative Jacobi decoding with a coupled draft update: each pass verifies a window of
    /// `window` draft tokens and commits every accepted one. Every committed token is
    /// distributed exactly as sequential sampling would draw it (other random numbers, so a seed
    /// makes another image than under `Sequential`).
    Sjd { window: usize },
    /// ZipAR: row r + 1 starts once row r has `window` tokens, and every started row advances
    /// one token a pass. It changes the distribution (a token does not see the tokens to the
    /// upper right that are not made yet); `window` = the grid's width is sequential decoding.
    Zipar { window: usize },
}

impl Decoding {
    /// The window `--decode sjd` takes unless told (see docs/performance.md for the
    /// measurements behind it).
    pub const DEFAULT_SJD_WINDOW: usize = 16;

    /// The short name the CLI takes (`sequential`, `sjd`, `zipar`).
    pub fn name(self) -> &'static str {
        match self {
            Decoding::Sequential => "sequential",
            Decoding::Sjd { .. } => "sjd",
            Decoding::Zipar { .. } => "zipar",
        }
    }

    /// Whether the tokens follow the sequential sampler's distribution exactly.
    pub fn is_exact(self) -> bool {
        !matches!(self, Decoding::Zipar { .. })
    }

    /// Name and settings, as the CLI and the PNG record's summary print them.
    pub fn describe(self) -> String {
        match self {
            Decoding::Sequential => "sequential".into(),
            Decoding::Sjd { window } => format!("sjd (window {window})"),
            Decoding::Zipar { window } => format!("zipar (window {window})"),
        }
    }

    /// Checks the settings against the image grid (`grid` × `grid` tokens).
    pub fn validate(self, grid: usize) -> Result<(), DecodingError> {
        match self {
            Decoding::Sequential => Ok(()),
            Decoding::Sjd { window } if window == 0 => Err(DecodingError::SjdWindow(window)),
            Decoding::Sjd { .. } => Ok(()),
            Decoding::Zipar { window } if window == 0 || window > grid => {
                Err(DecodingError::ZiparWindow { window, grid })
            }
            Decoding::Zipar { .. } => Ok(()),
        }
    }
}

/// Decoding settings that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodingError {
    #[error("the SJD window must hold at least one draft token, got {0}")]
    SjdWindow(usize),
    #[error("the ZipAR window must be between 1 and the grid's width {grid}, got {window}")]
    ZiparWindow { window: usize, grid: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_against_the_grid() {
        assert!(Decoding::Sequential.validate(16).is_ok());
        assert!(Decoding::Sjd { window: 16 }.validate(16).is_ok());
        assert!(Decoding::Sjd { window: 0 }.validate(16).is_err());
        assert!(Decoding::Zipar { window: 16 }.validate(16).is_ok());
        assert!(Decoding::Zipar { window: 17 }.validate(16).is_err());
        assert!(Decoding::Zipar { window: 0 }.validate(16).is_err());
        assert!(!Decoding::Zipar { window: 4 }.is_exact());
        assert!(Decoding::Sjd { window: 4 }.is_exact());
    }

    #[test]
    fn records_round_trip_and_old_records_read_as_sequential() {
        for d in [
            Decoding::Sequential,
            Decoding::Sjd { window: 8 },
            Decoding::Zipar { window: 4 },
        ] {
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(serde_json::from_str::<Decoding>(&json).unwrap(), d);
        }
        assert_eq!(
            serde_json::to_string(&Decoding::Sjd { window: 8 }).unwrap(),
            r#"{"method":"sjd","window":8}"#
        );
    }
}
