//! The decoding options shared by `generate`, `bench` and `eval-classes`.

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use llamagen::generate::Decoding;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DecodeArg {
    /// One token a forward pass, in raster order (the official sampler).
    Sequential,
    /// Speculative Jacobi decoding: a window of draft tokens verified each pass; every token is
    /// distributed exactly as sequential sampling draws it (from other random numbers: a seed
    /// makes another image than under sequential).
    Sjd,
    /// ZipAR: the next row starts once a row has --zipar-window tokens. Fewer passes, but it
    /// changes the distribution (a token does not see the tokens to its upper right that are
    /// not made yet).
    Zipar,
}

#[derive(Args, Debug, Clone, Default)]
pub struct DecodeArgs {
    /// How forward passes become tokens: sequential (one a pass), sjd (several a pass, exact in
    /// distribution) or zipar (rows in parallel; changes the distribution). Default:
    /// sequential, or what the --from PNG records.
    #[arg(long, value_enum)]
    pub decode: Option<DecodeArg>,
    /// SJD: draft tokens verified per pass.
    #[arg(long, value_name = "L")]
    pub sjd_window: Option<usize>,
    /// ZipAR: tokens a row needs before the row below starts (1 … the grid's width; the width
    /// is sequential decoding). Default: two thirds of the width, rounded up (16 of 24, the
    /// paper's setting).
    #[arg(long, value_name = "W")]
    pub zipar_window: Option<usize>,
}

impl DecodeArgs {
    /// The decoding for a `grid` × `grid` model; `recorded` is what a --from PNG used (the
    /// options given replace it).
    pub fn resolve(&self, grid: usize, recorded: Option<Decoding>) -> Result<Decoding> {
        let method = match (self.decode, recorded) {
            (Some(m), _) => m,
            (None, Some(Decoding::Sjd { .. })) => DecodeArg::Sjd,
            (None, Some(Decoding::Zipar { .. })) => DecodeArg::Zipar,
            (None, _) => DecodeArg::Sequential,
        };
        if method != DecodeArg::Sjd && self.sjd_window.is_some() {
            bail!("--sjd-window applies to --decode sjd only");
        }
        if method != DecodeArg::Zipar && self.zipar_window.is_some() {
            bail!("--zipar-window applies to --decode zipar only");
        }
        let decoding = match method {
            DecodeArg::Sequential => Decoding::Sequential,
            DecodeArg::Sjd => Decoding::Sjd {
                window: self.sjd_window.unwrap_or(match recorded {
                    Some(Decoding::Sjd { window }) => window,
                    _ => Decoding::DEFAULT_SJD_WINDOW,
                }),
            },
            DecodeArg::Zipar => Decoding::Zipar {
                window: self.zipar_window.unwrap_or(match recorded {
                    Some(Decoding::Zipar { window }) => window,
                    _ => default_zipar_window(grid),
                }),
            },
        };
        decoding.validate(grid)?;
        Ok(decoding)
    }
}

/// Says the decoding when it is not the sequential one, and whether it changes the distribution.
pub fn announce(decoding: Decoding) {
    if decoding != Decoding::Sequential {
        eprintln!(
            "decoding: {}{}",
            decoding.describe(),
            if decoding.is_exact() {
                ""
            } else {
                " (changes the distribution: not the model's sequential samples)"
            }
        );
    }
}

/// Two thirds of the grid's width, rounded up.
pub fn default_zipar_window(grid: usize) -> usize {
    (2 * grid).div_ceil(3).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_records_and_conflicts() {
        let none = DecodeArgs::default();
        assert_eq!(none.resolve(16, None).unwrap(), Decoding::Sequential);
        let recorded = Decoding::Zipar { window: 5 };
        assert_eq!(none.resolve(16, Some(recorded)).unwrap(), recorded);
        let sjd = DecodeArgs {
            decode: Some(DecodeArg::Sjd),
            ..Default::default()
        };
        assert_eq!(
            sjd.resolve(16, Some(recorded)).unwrap(),
            Decoding::Sjd {
                window: Decoding::DEFAULT_SJD_WINDOW
            }
        );
        let zipar = DecodeArgs {
            decode: Some(DecodeArg::Zipar),
            ..Default::default()
        };
        assert_eq!(
            zipar.resolve(24, None).unwrap(),
            Decoding::Zipar { window: 16 }
        );
        let wrong = DecodeArgs {
            sjd_window: Some(4),
            ..Default::default()
        };
        assert!(wrong.resolve(16, None).is_err());
        let too_wide = DecodeArgs {
            decode: Some(DecodeArg::Zipar),
            zipar_window: Some(17),
            ..Default::default()
        };
        assert!(too_wide.resolve(16, None).is_err());
    }
}
