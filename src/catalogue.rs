//! The course catalogue: data files loaded at start.
//!
//! The shipped files (`courses/*.json`, embedded in the binary) hold an
//! 8-week beginner walk/run programme and intermediate and advanced
//! sessions; an operator adds their own with `--courses-dir` (every `*.json`
//! there). A file is a JSON array of courses:
//! `{slug, name, description, level, themes, steps, route?}` (see
//! `domain::course`). A course's id is derived from its slug, so it stays
//! the same across restarts and nodes. A file that does not parse, or holds
//! a course that cannot be run, is refused at start with the file and line.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use rust_embed::RustEmbed;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::Visibility;
use crate::domain::course::{Course, Level, Step};

#[derive(RustEmbed)]
#[folder = "courses/"]
struct Shipped;

/// A course as a catalogue file writes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    slug: String,
    name: String,
    #[serde(default)]
    description: String,
    level: Level,
    #[serde(default)]
    themes: Vec<String>,
    #[serde(default)]
    steps: Vec<Step>,
    #[serde(default)]
    route: Option<Vec<[f64; 2]>>,
}

#[derive(Default)]
pub struct Catalogue {
    courses: Vec<Arc<Course>>,
    by_id: HashMap<Uuid, Arc<Course>>,
}

/// The id of a catalogue course: a UUID (version 8) from its slug.
pub fn catalogue_id(slug: &str) -> Uuid {
    let hash: [u8; 32] = Sha256::new()
        .chain_update(b"trailcast-course:")
        .chain_update(slug.as_bytes())
        .finalize()
        .into();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    Uuid::new_v8(bytes)
}

impl Catalogue {
    /// The shipped courses and those in `dir`.
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Catalogue> {
        let mut catalogue = Catalogue::default();
        let mut shipped: Vec<_> = Shipped::iter().collect();
        shipped.sort();
        for name in shipped {
            let file = Shipped::get(&name).context("an embedded course file")?;
            let text = std::str::from_utf8(&file.data).context("course files are UTF-8")?;
            catalogue.add_file(&format!("courses/{name}"), text)?;
        }
        if let Some(dir) = dir {
            let mut files: Vec<_> = std::fs::read_dir(dir)
                .with_context(|| format!("reading --courses-dir {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            files.sort();
            for path in files {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                catalogue.add_file(&path.display().to_string(), &text)?;
            }
        }
        Ok(catalogue)
    }

    /// Adds one file's courses, or says which file and line is wrong.
    pub fn add_file(&mut self, file: &str, text: &str) -> anyhow::Result<()> {
        let entries: Vec<Entry> = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("{file}: line {}: {e}", e.line()))?;
        for entry in entries {
            let line = line_of(text, &format!("\"{}\"", entry.slug));
            let course = Course {
                id: catalogue_id(&entry.slug),
                slug: Some(entry.slug.clone()),
                name: entry.name,
                description: entry.description,
                level: entry.level,
                themes: entry.themes,
                steps: entry.steps,
                route: entry.route,
                owner_id: None,
                visibility: Visibility::Public,
            };
            if let Some(why) = course.problem() {
                bail!("{file}: line {line}: course `{}`: {why}", entry.slug);
            }
            if self.by_id.contains_key(&course.id) {
                bail!(
                    "{file}: line {line}: course `{}` is defined twice",
                    entry.slug
                );
            }
            let course = Arc::new(course);
            self.by_id.insert(course.id, course.clone());
            self.courses.push(course);
        }
        Ok(())
    }

    pub fn get(&self, id: Uuid) -> Option<Arc<Course>> {
        self.by_id.get(&id).cloned()
    }

    pub fn len(&self) -> usize {
        self.courses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.courses.is_empty()
    }

    /// Courses whose name or description contains `q` (any case), at
    /// `level` and with `theme`, in catalogue order.
    pub fn search(
        &self,
        q: Option<&str>,
        level: Option<Level>,
        theme: Option<&str>,
    ) -> Vec<Arc<Course>> {
        let q = q.map(str::to_lowercase).filter(|q| !q.is_empty());
        self.courses
            .iter()
            .filter(|c| level.is_none_or(|l| c.level == l))
            .filter(|c| theme.is_none_or(|t| c.themes.iter().any(|x| x.eq_ignore_ascii_case(t))))
            .filter(|c| {
                q.as_deref().is_none_or(|q| {
                    c.name.to_lowercase().contains(q) || c.description.to_lowercase().contains(q)
                })
            })
            .cloned()
            .collect()
    }
}

/// The 1-based line on which `needle` first appears (1 if it does not).
fn line_of(text: &str, needle: &str) -> usize {
    text.find(needle)
        .map_or(1, |at| text[..at].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_catalogue_loads_with_the_whole_beginner_programme() {
        let catalogue = Catalogue::load(None).unwrap();
        let beginner = catalogue.search(None, Some(Level::Beginner), Some("walk-run programme"));
        assert_eq!(beginner.len(), 24, "8 weeks × 3 sessions");
        assert!(
            !catalogue
                .search(None, Some(Level::Advanced), None)
                .is_empty()
        );
        assert!(
            !catalogue
                .search(Some("INTERVALS"), Some(Level::Intermediate), None)
                .is_empty()
        );
        let first = &beginner[0];
        assert_eq!(catalogue.get(first.id).unwrap().slug, first.slug);
        assert_eq!(
            first.id,
            catalogue_id("beginner-w1-s1"),
            "ids come from slugs"
        );
    }

    #[test]
    fn a_bad_file_is_refused_with_its_name_and_line() {
        let mut catalogue = Catalogue::default();
        let err = catalogue
            .add_file(
                "mine.json",
                "[\n {\"slug\": \"a\",\n  \"name\": \"A\", \"level\": \"expert\"}\n]",
            )
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("mine.json: line 3:"), "{err}");
        let no_steps = "[\n{\"slug\": \"x\", \"name\": \"X\", \"level\": \"beginner\"},\n{\"slug\": \"y\", \"name\": \"Y\", \"level\": \"beginner\"}\n]";
        let err = catalogue
            .add_file("two.json", no_steps)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("two.json: line 2: course `x`"), "{err}");
    }
}
