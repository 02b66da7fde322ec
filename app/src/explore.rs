//! The X/Y grid: two sampler parameters, a list of values for each, run as ONE batch with
//! per-sample parameters.

use llamagen::sampling::SamplerParams;
use serde::{Deserialize, Serialize};

/// A parameter an axis can vary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Axis {
    CfgScale,
    Temperature,
    TopK,
    TopP,
    CfgInterval,
    Seed,
    Class,
    /// Prompts of a text-conditional model, separated by `|`.
    Prompt,
}

impl Axis {
    pub const ALL: [Axis; 8] = [
        Axis::CfgScale,
        Axis::Temperature,
        Axis::TopK,
        Axis::TopP,
        Axis::CfgInterval,
        Axis::Seed,
        Axis::Class,
        Axis::Prompt,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Axis::CfgScale => "CFG scale",
            Axis::Temperature => "temperature",
            Axis::TopK => "top-k",
            Axis::TopP => "top-p",
            Axis::CfgInterval => "CFG interval",
            Axis::Seed => "seed",
            Axis::Class => "class",
            Axis::Prompt => "prompt",
        }
    }
}

/// A value on an axis.
#[derive(Debug, Clone, PartialEq)]
pub enum AxisValue {
    Number(f64),
    Class(usize),
    Prompt(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct XyGrid {
    pub x: Axis,
    pub x_values: String,
    pub y: Axis,
    pub y_values: String,
}

impl Default for XyGrid {
    fn default() -> Self {
        Self {
            x: Axis::CfgScale,
            x_values: "1.0, 2.0, 4.0".into(),
            y: Axis::Temperature,
            y_values: "0.7, 1.0".into(),
        }
    }
}

/// One cell of a grid: its parameters, its class and where it sits.
#[derive(Debug, Clone, PartialEq)]
pub struct GridCell {
    pub params: SamplerParams,
    pub class: usize,
    pub prompt: Option<String>,
    pub label: String,
}

/// Parses an axis' comma-separated values (prompts: separated by `|`). Classes are ids or
/// names (`resolve`).
pub fn parse_values(
    axis: Axis,
    text: &str,
    resolve: &dyn Fn(&str) -> Result<usize, String>,
) -> Result<Vec<AxisValue>, String> {
    let separator = if axis == Axis::Prompt { '|' } else { ',' };
    let values: Vec<&str> = text
        .split(separator)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if values.is_empty() {
        return Err(format!("{}: give at least one value", axis.name()));
    }
    values
        .into_iter()
        .map(|v| match axis {
            Axis::Class => resolve(v).map(AxisValue::Class),
            Axis::Prompt => Ok(AxisValue::Prompt(v.to_string())),
            _ => v
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(AxisValue::Number)
                .ok_or_else(|| format!("{}: '{v}' is not a number", axis.name())),
        })
        .collect()
}

fn apply(
    axis: Axis,
    value: &AxisValue,
    params: &mut SamplerParams,
    class: &mut usize,
    prompt: &mut Option<String>,
) {
    match (axis, value) {
        (Axis::CfgScale, AxisValue::Number(x)) => params.cfg_scale = *x as f32,
        (Axis::Temperature, AxisValue::Number(x)) => params.temperature = *x as f32,
        (Axis::TopK, AxisValue::Number(x)) => params.top_k = x.max(0.0) as usize,
        (Axis::TopP, AxisValue::Number(x)) => params.top_p = *x as f32,
        (Axis::CfgInterval, AxisValue::Number(x)) => params.cfg_interval = *x as i32,
        (Axis::Seed, AxisValue::Number(x)) => params.seed = x.max(0.0) as u64,
        (Axis::Class, AxisValue::Class(c)) => *class = *c,
        (Axis::Prompt, AxisValue::Prompt(p)) => *prompt = Some(p.clone()),
        _ => {}
    }
}

pub fn label(axis: Axis, value: &AxisValue, class_name: &dyn Fn(usize) -> String) -> String {
    match value {
        AxisValue::Class(c) => class_name(*c),
        AxisValue::Prompt(p) => p.clone(),
        AxisValue::Number(x) => match axis {
            Axis::TopK | Axis::Seed | Axis::CfgInterval => format!("{}", *x as i64),
            _ => format!("{x}"),
        },
    }
}

/// The cells of a grid, row by row (y outer, x inner), each from `base` with its two values.
pub fn cells(
    x: Axis,
    xs: &[AxisValue],
    y: Axis,
    ys: &[AxisValue],
    base: SamplerParams,
    class: usize,
    prompt: Option<&str>,
    class_name: &dyn Fn(usize) -> String,
) -> Vec<GridCell> {
    let mut out = Vec::with_capacity(xs.len() * ys.len());
    for yv in ys {
        for xv in xs {
            let mut params = base;
            let mut c = class;
            let mut p = prompt.map(str::to_string);
            apply(y, yv, &mut params, &mut c, &mut p);
            apply(x, xv, &mut params, &mut c, &mut p);
            out.push(GridCell {
                params,
                class: c,
                prompt: p,
                label: format!(
                    "{} {}, {} {}",
                    x.name(),
                    label(x, xv, class_name),
                    y.name(),
                    label(y, yv, class_name)
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_by_three_grid_varies_each_axis_along_its_direction() {
        let none = |_: &str| Err("no classes".to_string());
        let xs = parse_values(Axis::CfgScale, "1, 2.5, 4", &none).unwrap();
        let ys = parse_values(Axis::TopK, "10,100", &none).unwrap();
        let base = SamplerParams {
            seed: 7,
            ..Default::default()
        };
        let cells = cells(Axis::CfgScale, &xs, Axis::TopK, &ys, base, 3, None, &|c| {
            c.to_string()
        });
        assert_eq!(cells.len(), 6);
        assert_eq!(cells[1].params.cfg_scale, 2.5);
        assert_eq!(cells[1].params.top_k, 10);
        assert_eq!(cells[5].params.cfg_scale, 4.0);
        assert_eq!(cells[5].params.top_k, 100);
        assert!(cells.iter().all(|c| c.params.seed == 7 && c.class == 3));
        assert_eq!(cells[4].label, "CFG scale 2.5, top-k 100");
    }

    #[test]
    fn bad_values_are_reported_not_dropped() {
        let none = |_: &str| Err("no classes".to_string());
        assert!(parse_values(Axis::Temperature, "1.0, warm", &none).is_err());
        assert!(parse_values(Axis::Temperature, " , ", &none).is_err());
        assert!(parse_values(Axis::Class, "cat", &none).is_err());
        // Prompts may hold commas: they are separated by '|'.
        let prompts = parse_values(Axis::Prompt, "a red star, large | a blue ring", &none).unwrap();
        assert_eq!(prompts[0], AxisValue::Prompt("a red star, large".into()));
        assert_eq!(prompts.len(), 2);
    }
}
