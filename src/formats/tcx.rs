//! Garmin's Training Center XML (TrainingCenterDatabase v2).

use roxmltree::Node;

use super::{FormatError, ImportedTrack, child, children, escape, number, sport, time, title};
use crate::domain::time::to_rfc3339;
use crate::domain::{Activity, ActivityType, Fix, Point, Stats};

/// One `ImportedTrack` per `Activity` (its laps and tracks joined);
/// trackpoints without a position (sensor-only samples) are skipped.
pub(super) fn read(root: Node<'_, '_>) -> Result<Vec<ImportedTrack>, FormatError> {
    let mut tracks = Vec::new();
    let Some(activities) = child(root, "Activities") else {
        return Ok(tracks);
    };
    for activity in children(activities, "Activity") {
        let activity_type = activity.attribute("Sport").and_then(sport);
        let name = child(activity, "Notes")
            .or_else(|| child(activity, "Id"))
            .and_then(|n| n.text())
            .map(|t| t.trim().to_string());
        let mut fixes = Vec::new();
        for lap in children(activity, "Lap") {
            for track in children(lap, "Track") {
                for tp in children(track, "Trackpoint") {
                    if let Some(fix) = fix(tp)? {
                        fixes.push(fix);
                    }
                }
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

fn fix(tp: Node<'_, '_>) -> Result<Option<Fix>, FormatError> {
    let Some(position) = child(tp, "Position") else {
        return Ok(None);
    };
    let at = child(tp, "Time").ok_or_else(|| FormatError::at(tp, "Trackpoint without <Time>"))?;
    let coordinate = |name: &str| -> Result<f64, FormatError> {
        number(child(position, name), name)?
            .ok_or_else(|| FormatError::at(position, format!("Position without <{name}>")))
    };
    let hr = child(tp, "HeartRateBpm").and_then(|h| child(h, "Value"));
    // Cadence is a child of the point; running cadence (RunCadence) sits in
    // Garmin's ActivityExtension.
    let cadence = child(tp, "Cadence").or_else(|| {
        child(tp, "Extensions").and_then(|e| {
            e.descendants()
                .find(|n| n.is_element() && n.tag_name().name() == "RunCadence")
        })
    });
    Ok(Some(Fix {
        ts: time(at)?,
        lat: coordinate("LatitudeDegrees")?,
        lng: coordinate("LongitudeDegrees")?,
        alt: number(child(tp, "AltitudeMeters"), "AltitudeMeters")?,
        speed: None,
        accuracy: None,
        hr: number(hr, "HeartRateBpm")?,
        cadence: number(cadence, "Cadence")?,
        battery: None,
    }))
}

/// TCX knows three sports.
fn sport_name(t: ActivityType) -> &'static str {
    match t {
        ActivityType::Run | ActivityType::Walk | ActivityType::Hike => "Running",
        ActivityType::Ride => "Biking",
        _ => "Other",
    }
}

/// The activity as TCX: one lap with the whole track and its totals.
pub fn write(activity: &Activity, track: &[Point], stats: &Stats) -> String {
    let mut out = String::with_capacity(600 + track.len() * 260);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(
        "<TrainingCenterDatabase xmlns=\"http://www.garmin.com/xmlschemas/TrainingCenterDatabase/v2\">\n",
    );
    let start = to_rfc3339(activity.started_at);
    out.push_str(&format!(
        "<Activities><Activity Sport=\"{}\"><Id>{start}</Id>\n",
        sport_name(activity.activity_type)
    ));
    out.push_str(&format!(
        "<Lap StartTime=\"{start}\"><TotalTimeSeconds>{}</TotalTimeSeconds><DistanceMeters>{}</DistanceMeters>\
         <Calories>{}</Calories><Intensity>Active</Intensity><TriggerMethod>Manual</TriggerMethod>\n<Track>\n",
        stats.moving_time_s,
        stats.distance_m,
        stats.calories_kcal.clamp(0.0, 65_535.0) as u32,
    ));
    for p in track {
        out.push_str(&format!(
            "<Trackpoint><Time>{}</Time><Position><LatitudeDegrees>{}</LatitudeDegrees>\
             <LongitudeDegrees>{}</LongitudeDegrees></Position>",
            to_rfc3339(p.ts),
            p.lat,
            p.lng
        ));
        if let Some(alt) = p.alt {
            out.push_str(&format!("<AltitudeMeters>{alt}</AltitudeMeters>"));
        }
        if let Some(hr) = p.hr {
            out.push_str(&format!("<HeartRateBpm><Value>{hr}</Value></HeartRateBpm>"));
        }
        if let Some(cad) = p.cadence {
            out.push_str(&format!("<Cadence>{}</Cadence>", cad.min(254)));
        }
        out.push_str("</Trackpoint>\n");
    }
    out.push_str(&format!(
        "</Track>\n</Lap>\n<Notes>{}</Notes>\n</Activity></Activities>\n</TrainingCenterDatabase>\n",
        escape(&title(activity))
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::super::read as read_any;
    use super::*;
    use crate::domain::Visibility;

    const GARMIN: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<TrainingCenterDatabase xmlns="http://www.garmin.com/xmlschemas/TrainingCenterDatabase/v2" xmlns:ns3="http://www.garmin.com/xmlschemas/ActivityExtension/v2">
  <Activities>
    <Activity Sport="Biking">
      <Id>2024-05-01T06:00:00.000Z</Id>
      <Lap StartTime="2024-05-01T06:00:00.000Z">
        <TotalTimeSeconds>2.0</TotalTimeSeconds>
        <Track>
          <Trackpoint>
            <Time>2024-05-01T06:00:00.000Z</Time>
            <Position><LatitudeDegrees>48.1</LatitudeDegrees><LongitudeDegrees>11.5</LongitudeDegrees></Position>
            <AltitudeMeters>520.0</AltitudeMeters>
            <HeartRateBpm><Value>131</Value></HeartRateBpm>
            <Cadence>88</Cadence>
          </Trackpoint>
          <Trackpoint><Time>2024-05-01T06:00:01.000Z</Time><HeartRateBpm><Value>132</Value></HeartRateBpm></Trackpoint>
          <Trackpoint>
            <Time>2024-05-01T06:00:02.000Z</Time>
            <Position><LatitudeDegrees>48.1001</LatitudeDegrees><LongitudeDegrees>11.5</LongitudeDegrees></Position>
            <Extensions><ns3:TPX><ns3:RunCadence>79</ns3:RunCadence></ns3:TPX></Extensions>
          </Trackpoint>
        </Track>
      </Lap>
    </Activity>
  </Activities>
</TrainingCenterDatabase>"#;

    #[test]
    fn reads_garmin_tcx_skipping_points_without_position() {
        let tracks = read_any(GARMIN).unwrap();
        assert_eq!(tracks.len(), 1);
        let t = &tracks[0];
        assert_eq!(t.activity_type, Some(ActivityType::Ride));
        assert_eq!(t.fixes.len(), 2);
        let f = t.fixes[0];
        assert_eq!(
            (f.lat, f.lng, f.alt, f.hr, f.cadence),
            (48.1, 11.5, Some(520.0), Some(131.0), Some(88.0))
        );
        assert_eq!(t.fixes[1].cadence, Some(79.0), "RunCadence");
    }

    #[test]
    fn what_it_writes_it_reads_back() {
        let activity = Activity::start(
            uuid::Uuid::nil(),
            uuid::Uuid::nil(),
            ActivityType::Run,
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
                hr: Some(150),
                cadence: Some(85),
                battery: None,
            })
            .collect();
        let stats = Stats::of(&activity, &activity.track, 1_700_000_003_000);
        let back = read_any(&write(&activity, &track, &stats)).unwrap();
        assert_eq!(back[0].activity_type, Some(ActivityType::Run));
        let times: Vec<i64> = back[0].fixes.iter().map(|f| f.ts).collect();
        assert_eq!(times, track.iter().map(|p| p.ts).collect::<Vec<_>>());
        assert_eq!(back[0].fixes[1].alt, None);
        assert_eq!(back[0].fixes[2].hr, Some(150.0));
    }
}
