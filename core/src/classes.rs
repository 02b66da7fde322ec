//! Class names (ImageNet's 1000 for the official checkpoints) and resolving what a user typed —
//! an id or a name — to a class id.

/// ImageNet-1k class names, one per line, in class-id order.
pub const IMAGENET_CLASSES: &str = include_str!("../../assets/imagenet_classes.txt");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassError {
    #[error("class id {id} is out of range: the model has {count} classes (0..={})", .count.saturating_sub(1))]
    OutOfRange { id: usize, count: usize },
    #[error("'{name}' is ambiguous: {}; pass the class id instead", .matches.iter().map(|(i, n)| format!("{i} ({n})")).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        name: String,
        matches: Vec<(usize, String)>,
    },
    #[error("unknown class '{name}'{}", if .suggestions.is_empty() { String::new() } else { format!("; close matches: {}", .suggestions.iter().map(|(i, n)| format!("{i} ({n})")).collect::<Vec<_>>().join(", ")) })]
    Unknown {
        name: String,
        suggestions: Vec<(usize, String)>,
    },
}

/// The class names of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassNames {
    pub names: Vec<String>,
}

fn normalize(s: &str) -> String {
    s.trim().to_lowercase().replace(['_', '-'], " ")
}

impl ClassNames {
    pub fn imagenet() -> Self {
        Self::from_lines(IMAGENET_CLASSES)
    }

    pub fn from_lines(text: &str) -> Self {
        Self {
            names: text
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect(),
        }
    }

    /// Names `0..count` when a model has no names of its own.
    pub fn numbered(count: usize) -> Self {
        Self {
            names: (0..count).map(|i| format!("class {i}")).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, id: usize) -> Option<&str> {
        self.names.get(id).map(String::as_str)
    }

    /// An id (`207`) or a name (`golden retriever`, case-insensitive, `_` or `-` for spaces).
    pub fn resolve(&self, query: &str) -> Result<usize, ClassError> {
        if let Ok(id) = query.trim().parse::<usize>() {
            return if id < self.len() {
                Ok(id)
            } else {
                Err(ClassError::OutOfRange {
                    id,
                    count: self.len(),
                })
            };
        }
        let q = normalize(query);
        let exact: Vec<(usize, String)> = self
            .names
            .iter()
            .enumerate()
            .filter(|(_, n)| normalize(n) == q)
            .map(|(i, n)| (i, n.clone()))
            .collect();
        match exact.len() {
            1 => return Ok(exact[0].0),
            n if n > 1 => {
                return Err(ClassError::Ambiguous {
                    name: query.to_string(),
                    matches: exact,
                });
            }
            _ => {}
        }
        let partial: Vec<(usize, String)> = self
            .names
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                let n = normalize(n);
                n.contains(&q)
                    || q.contains(&n)
                    || q.split(' ')
                        .any(|w| w.len() > 2 && n.split(' ').any(|x| x == w))
            })
            .map(|(i, n)| (i, n.clone()))
            .take(8)
            .collect();
        Err(ClassError::Unknown {
            name: query.to_string(),
            suggestions: partial,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagenet_names_resolve() {
        let c = ClassNames::imagenet();
        assert_eq!(c.len(), 1000);
        assert_eq!(c.resolve("207"), Ok(207));
        assert_eq!(c.resolve("Golden_Retriever"), Ok(207));
        assert_eq!(c.resolve("tench"), Ok(0));
        assert!(matches!(
            c.resolve("1000"),
            Err(ClassError::OutOfRange { .. })
        ));
        // 'crane' is both a bird (134) and a machine (517).
        let err = c.resolve("crane").unwrap_err();
        assert!(
            matches!(&err, ClassError::Ambiguous { matches, .. } if matches.len() == 2),
            "{err}"
        );
        assert!(err.to_string().contains("134") && err.to_string().contains("517"));
        let err = c.resolve("retriever").unwrap_err();
        assert!(err.to_string().contains("golden retriever"), "{err}");
        assert!(
            matches!(c.resolve("zzzz"), Err(ClassError::Unknown { suggestions, .. }) if suggestions.is_empty())
        );
    }
}
