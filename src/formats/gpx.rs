//! GPX 1.1 (topografix.com/GPX/1/1), with Garmin's TrackPointExtension v1
//! for heart rate and cadence.

use roxmltree::Node;

use super::{FormatError, ImportedTrack, child, children, escape, number, sport, time, title};
use crate::domain::time::to_rfc3339;
use crate::domain::{Activity, Fix, Point};

/// One `ImportedTrack` per `trk` (its segments joined); waypoints and
/// routes carry no times and are ignored.
pub(super) fn read(root: Node<'_, '_>) -> Result<Vec<ImportedTrack>, FormatError> {
    let mut tracks = Vec::new();
    for trk in children(root, "trk") {
        let name = child(trk, "name")
            .and_then(|n| n.text())
            .map(|t| t.trim().to_string());
        let activity_type = child(trk, "type").and_then(|n| n.text()).and_then(sport);
        let mut fixes = Vec::new();
        for seg in children(trk, "trkseg") {
            for pt in children(seg, "trkpt") {
                fixes.push(fix(pt)?);
            }
        }
        tracks.push(ImportedTrack {
            name: name.filter(|n| !n.is_empty()),
            activity_type,
            fixes,
        });
    }
    Ok(tracks)
}

/// A planned route from a GPX document: its first route's `rtept`s, or if
/// it has none, its tracks' `trkpt`s (times not needed), as `[lat, lng]`.
pub fn route(text: &str) -> Result<Vec<[f64; 2]>, FormatError> {
    let doc = roxmltree::Document::parse_with_options(
        text,
        roxmltree::ParsingOptions {
            allow_dtd: false,
            ..Default::default()
        },
    )
    .map_err(|e| FormatError {
        line: e.pos().row,
        message: e.to_string(),
    })?;
    let root = doc.root_element();
    if root.tag_name().name() != "gpx" {
        return Err(FormatError::at(root, "expected a GPX document"));
    }
    let from_route: Vec<Node<'_, '_>> = children(root, "rte")
        .take(1)
        .flat_map(|rte| children(rte, "rtept"))
        .collect();
    let nodes = if from_route.is_empty() {
        root.descendants()
            .filter(|n| n.is_element() && n.tag_name().name() == "trkpt")
            .collect()
    } else {
        from_route
    };
    nodes
        .into_iter()
        .map(|pt| {
            let coordinate = |name: &str| {
                pt.attribute(name)
                    .and_then(|t| t.trim().parse::<f64>().ok())
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| FormatError::at(pt, format!("point without a valid `{name}`")))
            };
            Ok([coordinate("lat")?, coordinate("lon")?])
        })
        .collect()
}

fn fix(pt: Node<'_, '_>) -> Result<Fix, FormatError> {
    let coordinate = |name: &str| -> Result<f64, FormatError> {
        let text = pt
            .attribute(name)
            .ok_or_else(|| FormatError::at(pt, format!("trkpt without `{name}`")))?;
        text.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| FormatError::at(pt, format!("`{name}` `{text}` is not a number")))
    };
    let (lat, lng) = (coordinate("lat")?, coordinate("lon")?);
    let at = child(pt, "time").ok_or_else(|| FormatError::at(pt, "trkpt without <time>"))?;
    // Garmin's extension, whatever prefix the writer bound it to.
    let extension = |name: &str| {
        child(pt, "extensions").and_then(|ext| {
            ext.descendants()
                .find(|n| n.is_element() && n.tag_name().name() == name)
        })
    };
    Ok(Fix {
        ts: time(at)?,
        lat,
        lng,
        alt: number(child(pt, "ele"), "ele")?,
        speed: number(extension("speed"), "speed")?,
        accuracy: None,
        hr: number(extension("hr"), "hr")?,
        cadence: number(extension("cad"), "cad")?,
        battery: None,
    })
}

/// The GPX name of a type (`<type>`, as Strava and Garmin write it).
fn type_name(activity: &Activity) -> &'static str {
    use crate::domain::ActivityType::*;
    match activity.activity_type {
        Run => "running",
        Ride => "cycling",
        Walk => "walking",
        Hike => "hiking",
        Ski => "skiing",
        Swim => "swimming",
        Other => "other",
    }
}

/// The activity as GPX 1.1: one track, one segment, heart rate and cadence
/// in the TrackPointExtension when the points carry them.
pub fn write(activity: &Activity, track: &[Point]) -> String {
    let mut out = String::with_capacity(400 + track.len() * 160);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(
        "<gpx version=\"1.1\" creator=\"trailcast\" xmlns=\"http://www.topografix.com/GPX/1/1\" \
         xmlns:gpxtpx=\"http://www.garmin.com/xmlschemas/TrackPointExtension/v1\">\n",
    );
    let name = escape(&title(activity));
    out.push_str(&format!(
        "<metadata><name>{name}</name><time>{}</time></metadata>\n<trk><name>{name}</name><type>{}</type><trkseg>\n",
        to_rfc3339(activity.started_at),
        type_name(activity),
    ));
    for p in track {
        out.push_str(&format!("<trkpt lat=\"{}\" lon=\"{}\">", p.lat, p.lng));
        if let Some(alt) = p.alt {
            out.push_str(&format!("<ele>{alt}</ele>"));
        }
        out.push_str(&format!("<time>{}</time>", to_rfc3339(p.ts)));
        if p.hr.is_some() || p.cadence.is_some() {
            out.push_str("<extensions><gpxtpx:TrackPointExtension>");
            if let Some(hr) = p.hr {
                out.push_str(&format!("<gpxtpx:hr>{hr}</gpxtpx:hr>"));
            }
            if let Some(cad) = p.cadence {
                out.push_str(&format!("<gpxtpx:cad>{cad}</gpxtpx:cad>"));
            }
            out.push_str("</gpxtpx:TrackPointExtension></extensions>");
        }
        out.push_str("</trkpt>\n");
    }
    out.push_str("</trkseg></trk>\n</gpx>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::super::read as read_any;
    use super::*;
    use crate::domain::{ActivityType, Visibility};

    /// As Garmin Connect exports it (prefix `ns3` for the extension).
    const GARMIN: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<gpx creator="Garmin Connect" version="1.1" xmlns="http://www.topografix.com/GPX/1/1" xmlns:ns3="http://www.garmin.com/xmlschemas/TrackPointExtension/v1">
  <metadata><time>2024-05-01T06:00:00.000Z</time></metadata>
  <trk>
    <name>Morning Run</name>
    <type>running</type>
    <trkseg>
      <trkpt lat="52.5200" lon="13.4050">
        <ele>34.2</ele>
        <time>2024-05-01T06:00:00.000Z</time>
        <extensions><ns3:TrackPointExtension><ns3:hr>128</ns3:hr><ns3:cad>84</ns3:cad></ns3:TrackPointExtension></extensions>
      </trkpt>
      <trkpt lat="52.5201" lon="13.4050"><time>2024-05-01T06:00:01Z</time></trkpt>
    </trkseg>
    <trkseg>
      <trkpt lat="52.5202" lon="13.4050"><ele>35</ele><time>2024-05-01T06:00:02Z</time></trkpt>
    </trkseg>
  </trk>
</gpx>"#;

    #[test]
    fn reads_garmin_gpx_with_extensions_and_missing_elevations() {
        let tracks = read_any(GARMIN).unwrap();
        assert_eq!(tracks.len(), 1);
        let t = &tracks[0];
        assert_eq!(t.name.as_deref(), Some("Morning Run"));
        assert_eq!(t.activity_type, Some(ActivityType::Run));
        assert_eq!(t.fixes.len(), 3, "segments joined");
        let f = t.fixes[0];
        assert_eq!((f.lat, f.lng, f.alt), (52.52, 13.405, Some(34.2)));
        assert_eq!((f.hr, f.cadence), (Some(128.0), Some(84.0)));
        assert_eq!(t.fixes[1].alt, None);
        assert_eq!(t.fixes[2].ts - t.fixes[0].ts, 2_000);
    }

    #[test]
    fn a_point_without_time_or_with_a_bad_number_is_refused_with_its_line() {
        let no_time = GARMIN.replace("<time>2024-05-01T06:00:01Z</time>", "");
        assert_eq!(read_any(&no_time).unwrap_err().line, 13);
        let bad = GARMIN.replace("lat=\"52.5202\"", "lat=\"north\"");
        let err = read_any(&bad).unwrap_err();
        assert_eq!(err.line, 16, "{err}");
    }

    #[test]
    fn what_it_writes_it_reads_back() {
        let activity = Activity::start(
            uuid::Uuid::nil(),
            uuid::Uuid::nil(),
            ActivityType::Ride,
            Visibility::Friends,
            None,
            1_700_000_000_000,
        );
        let track: Vec<Point> = (0..3)
            .map(|i| Point {
                ts: 1_700_000_000_000 + i * 1000,
                lat: 48.0 + i as f64 * 1e-4,
                lng: 11.0,
                alt: (i != 1).then_some(500.5),
                speed: None,
                accuracy: None,
                hr: Some(140 + i as u16),
                cadence: (i == 2).then_some(90),
                battery: None,
            })
            .collect();
        let text = write(&activity, &track);
        let back = read_any(&text).unwrap();
        assert_eq!(back[0].activity_type, Some(ActivityType::Ride));
        assert_eq!(back[0].name.as_deref(), Some("Ride, 2023-11-14 22:13 UTC"));
        let expected: Vec<Fix> = track
            .iter()
            .map(|p| Fix {
                ts: p.ts,
                lat: p.lat,
                lng: p.lng,
                alt: p.alt,
                hr: p.hr.map(f64::from),
                cadence: p.cadence.map(f64::from),
                ..Fix::default()
            })
            .collect();
        assert_eq!(back[0].fixes, expected);
    }
}
