//! Activity files other apps read and write: GPX 1.1 and Garmin's TCX.
//!
//! Reading (`read`): any GPX or TCX document, namespace prefixes as the
//! writer chose them, into one `ImportedTrack` per GPX `trk` or TCX
//! `Activity`, with times, elevation, heart rate and cadence (GPX: Garmin's
//! TrackPointExtension, `hr` and `cad`; TCX: `HeartRateBpm`, `Cadence`).
//! A malformed document is refused with the line it fails on. Writing
//! (`gpx::write`, `tcx::write`): what gpsbabel and Garmin Connect read back.

pub mod gpx;
pub mod tcx;
pub mod trackers;

use crate::domain::time::{Millis, parse_rfc3339};
use crate::domain::{ActivityType, Fix};

/// Largest file `POST /v1/activities/import` takes.
pub const MAX_IMPORT_BYTES: usize = 25 * 1024 * 1024;

/// One track of a file: its fixes in file order, and what the file says
/// about it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedTrack {
    pub name: Option<String>,
    pub activity_type: Option<ActivityType>,
    pub fixes: Vec<Fix>,
}

/// Why a file could not be read: the message, and the line it is about.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct FormatError {
    pub line: u32,
    pub message: String,
}

impl FormatError {
    fn at(node: roxmltree::Node<'_, '_>, message: impl Into<String>) -> FormatError {
        FormatError {
            line: node.document().text_pos_at(node.range().start).row,
            message: message.into(),
        }
    }
}

/// Reads a GPX or TCX document, telling them apart by the root element.
pub fn read(text: &str) -> Result<Vec<ImportedTrack>, FormatError> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, options).map_err(|e| FormatError {
        line: e.pos().row,
        message: e.to_string(),
    })?;
    let root = doc.root_element();
    match root.tag_name().name() {
        "gpx" => gpx::read(root),
        "TrainingCenterDatabase" => tcx::read(root),
        other => Err(FormatError::at(
            root,
            format!("expected a GPX or TCX document, found <{other}>"),
        )),
    }
}

/// The sport a file names, in either format's words.
fn sport(name: &str) -> Option<ActivityType> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "running" | "run" | "trail_running" | "trail running" | "9" => ActivityType::Run,
        "biking" | "cycling" | "ride" | "road_biking" | "mountain_biking" | "1" => {
            ActivityType::Ride
        }
        "walking" | "walk" => ActivityType::Walk,
        "hiking" | "hike" => ActivityType::Hike,
        "swimming" | "swim" => ActivityType::Swim,
        "skiing" | "ski" | "cross_country_skiing" | "backcountry_skiing" => ActivityType::Ski,
        _ => return None,
    })
}

/// The first child element named `name` (any namespace).
fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn children<'a, 'i: 'a>(
    node: roxmltree::Node<'a, 'i>,
    name: &'a str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> + 'a {
    node.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

/// A number in an element's text (`None` when the element is absent).
fn number(node: Option<roxmltree::Node<'_, '_>>, what: &str) -> Result<Option<f64>, FormatError> {
    let Some(node) = node else { return Ok(None) };
    let text = node.text().unwrap_or("").trim();
    if text.is_empty() {
        return Ok(None);
    }
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(Some(v)),
        _ => Err(FormatError::at(
            node,
            format!("{what} `{text}` is not a number"),
        )),
    }
}

fn time(node: roxmltree::Node<'_, '_>) -> Result<Millis, FormatError> {
    let text = node.text().unwrap_or("").trim();
    parse_rfc3339(text)
        .filter(|ms| *ms >= 0)
        .ok_or_else(|| FormatError::at(node, format!("time `{text}` is not an ISO 8601 UTC time")))
}

/// Escapes text for an XML element or attribute.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A readable name for an exported activity: "Run, 2026-11-24 07:00 UTC".
fn title(activity: &crate::domain::Activity) -> String {
    let kind = match activity.activity_type {
        ActivityType::Run => "Run",
        ActivityType::Ride => "Ride",
        ActivityType::Walk => "Walk",
        ActivityType::Hike => "Hike",
        ActivityType::Ski => "Ski",
        ActivityType::Swim => "Swim",
        ActivityType::Other => "Activity",
    };
    let at = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(activity.started_at)
        .unwrap_or_default()
        .format("%Y-%m-%d %H:%M UTC");
    format!("{kind}, {at}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_document_names_its_line() {
        let err = read("<gpx>\n<trk>\n<trkseg>\n</trk>\n</gpx>").unwrap_err();
        assert_eq!(err.line, 4, "{err}");
        let err = read("<?xml version=\"1.0\"?>\n<kml/>").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("GPX or TCX"), "{err}");
    }

    #[test]
    fn escaping_keeps_markup_out() {
        assert_eq!(escape("a<b>&\"c'\u{7}"), "a&lt;b&gt;&amp;&quot;c&apos;");
    }
}
